"""Domains, storage and live tuning through libvirt-python.

A thin mapping layer: every call takes names and XML text from the planner's
objects, and libvirt errors come out as kvmctl errors with a sentence that
names the domain, volume or pool. `Virt` is the one object callers hold: its
connection (reopened after a daemon restart) is kvmctl.adapters.connection's,
its pool and volume calls kvmctl.adapters.storage's.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
from lxml import etree

from kvmctl.adapters.connection import _mapped
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.storage import Storage
from kvmctl.errors import ApplyError
from kvmctl.planner.hosts import is_remote
from kvmctl.state.paths import ensure_dir
from kvmctl.xml.metadata import KVMCTL_NS, KVMCTL_PREFIX, KvmctlMetadata, read_kvmctl_metadata

# Live tuning touches only the running domain; the persistent definition is
# replaced as a whole with defineXML, so the two never disagree.
_MODIFY = libvirt.VIR_DOMAIN_AFFECT_LIVE
_UNDEFINE = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)


def _without_namespace(meta: KvmctlMetadata) -> str:
    """virDomainSetMetadata puts the element into the namespace itself and
    refuses one that already declares it."""
    el = meta.to_element()
    for node in el.iter():
        node.tag = etree.QName(node).localname
    etree.cleanup_namespaces(el)
    return str(etree.tostring(el, encoding="unicode"))


def _quota(value: int | None) -> int | None:
    """libvirt's vcpu_quota with "unlimited" as -1: on cgroup v2 libvirt
    reports it as ULLONG_MAX / 1000 rather than -1."""
    if value is None:
        return None
    return -1 if value < 0 or value >= 2**53 // 1000 else value


def _cap_params(period: int | None, quota: int | None) -> dict[str, int]:
    """Scheduler parameters of a vCPU cap; no quota is written as -1 (no
    cap), so a cap that is removed goes away live."""
    params = {"vcpu_quota": quota if quota is not None else -1}
    if period is not None:
        params["vcpu_period"] = period
    return params


@dataclass(frozen=True)
class InForce:
    vcpus: list[frozenset[int]]
    emulator: frozenset[int]
    shares: int | None
    quota_us: int | None


@dataclass(frozen=True)
class DomainInfo:
    name: str
    active: bool
    state: int
    meta: KvmctlMetadata | None


DEFAULT_SHARES = 1024  # cgroup v1 cpu.shares of a domain whose XML has no <shares>


class Virt(Storage):
    """Domain calls, and the pool and volume calls of `Storage`, on one
    connection that is opened anew after a daemon restart (`Connection`)."""

    # --- domains ---------------------------------------------------------------

    def domains(self) -> list[DomainInfo]:
        out = []
        for dom in self.conn.listAllDomains():
            try:
                state = dom.state()[0]
                out.append(DomainInfo(dom.name(), dom.isActive() == 1, state, self._meta(dom)))
            except libvirt.libvirtError:
                continue  # undefined while we listed
        return out

    def _meta(self, dom: libvirt.virDomain) -> KvmctlMetadata | None:
        # virDomainGetMetadata hands the element back without its namespace,
        # so read it from the domain XML, where the namespace is kept.
        try:
            return read_kvmctl_metadata(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        except (libvirt.libvirtError, ValueError):
            return None

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise ApplyError(f"cannot look up domain '{name}': {err.get_error_message()}") from None

    def handle(self, name: str) -> libvirt.virDomain:
        """The libvirt object of a defined domain, for adapters that drive it
        themselves (a migration job); ApplyError when there is none."""
        dom = self.lookup(name)
        if dom is None:
            raise ApplyError(f"domain '{name}' does not exist")
        return dom

    def xml(self, name: str, inactive: bool = False, migratable: bool = False) -> str:
        """`migratable`: the XML as libvirt sends it along a migration (the
        base of a destination's definition)."""
        dom = self.handle(name)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        if migratable:
            flags |= libvirt.VIR_DOMAIN_XML_MIGRATABLE
        with _mapped(f"cannot read the XML of domain '{name}'"):
            return str(dom.XMLDesc(flags))

    def define(self, xml: str) -> None:
        self.ensure_log_dirs(xml)
        with _mapped("cannot define domain"):
            self.conn.defineXML(xml)

    def start_paused(self, name: str) -> None:
        dom = self.handle(name)
        self.ensure_log_dirs(self.xml(name, inactive=True))
        with _mapped(f"cannot start domain '{name}'"):
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)

    def ensure_log_dirs(self, xml: str) -> None:
        """virtlogd opens a domain's console logs but makes no directory for
        them: "Unable to open file ... No such file or directory" at start.
        Only for a libvirtd on this machine; other hosts get theirs from the
        kvm_host role."""
        if self.uri is None or is_remote(self.uri):
            return
        for path in etree.fromstring(xml.encode()).xpath("devices/*/log/@file"):
            ensure_dir(Path(str(path)).parent)

    def resume(self, name: str) -> None:
        with _mapped(f"cannot resume domain '{name}'"):
            self.handle(name).resume()

    def stop(self, name: str, grace: float = 0) -> str:
        """Stop the domain: with `grace`, a clean shutdown first (the guest
        agent, else the ACPI power button) for up to that many seconds, then
        power-off. Says which happened ("" when it was not running)."""
        dom = self.lookup(name)
        if dom is None:
            return ""
        with _mapped(f"cannot stop domain '{name}'"):
            if not dom.isActive():
                return ""  # a domain gone meanwhile raises, mapped like the rest
            if grace > 0:
                t0 = time.monotonic()
                if self._shut_down(dom, t0 + grace):
                    return f"shut down cleanly in {time.monotonic() - t0:.1f} s"
            try:
                dom.destroy()
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise
            return f"powered off after {grace:g} s without a clean shutdown" if grace else ""

    @staticmethod
    def _shut_down(dom: libvirt.virDomain, deadline: float) -> bool:
        """Ask the guest to shut down; True when it is off by `deadline`."""
        try:
            dom.shutdownFlags(
                libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT | libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN
            )
        except libvirt.libvirtError:
            return False  # neither the agent nor ACPI would take it: power off
        while time.monotonic() < deadline:
            try:
                if not dom.isActive():
                    return True
            except libvirt.libvirtError:
                return True  # a transient domain gone with its QEMU
            time.sleep(0.2)
        return False

    def undefine(self, name: str) -> None:
        dom = self.lookup(name)
        if dom is None:
            return
        with _mapped(f"cannot undefine domain '{name}'"):
            dom.undefineFlags(_UNDEFINE)

    # --- throw-away guests ----------------------------------------------------------

    def boots(self, xml: str, name: str, marker: str, timeout: float) -> tuple[float | None, str]:
        """Start a transient, auto-destroyed domain and watch its console for
        `marker` through libvirt (works for a remote host). Returns (seconds to
        the marker or None, why not). The domain is gone when this returns."""
        t0 = time.monotonic()
        flags = libvirt.VIR_DOMAIN_START_PAUSED | libvirt.VIR_DOMAIN_START_AUTODESTROY
        try:
            dom = self.conn.createXML(xml, flags)
        except libvirt.libvirtError as err:
            return None, f"libvirt could not start it: {(err.get_error_message() or '').strip()}"
        try:
            with ReadyWatch(self.conn, name, f"serial:{marker}") as watch:
                dom.resume()
                return watch.wait(timeout) - t0, ""
        except NotReady as err:
            return None, str(err)
        except libvirt.libvirtError as err:
            return None, f"libvirt lost it: {(err.get_error_message() or '').strip()}"
        finally:
            with suppress(libvirt.libvirtError):
                dom.destroy()

    # --- what is in force, as libvirtd reads it on its host ------------------------

    def in_force(self, name: str) -> InForce:
        """Affinity of the vCPU threads (read by libvirtd from the threads
        themselves), the emulator pinning and the cgroup's shares and quota. For
        hosts kvmctl cannot look at directly; locally /proc is read instead."""
        dom = self.handle(name)
        with _mapped(f"cannot read the CPU tuning of domain '{name}'"):
            _info, cpumaps = dom.vcpus()
            emulator = dom.emulatorPinInfo(libvirt.VIR_DOMAIN_AFFECT_LIVE)
            sched = dom.schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return InForce(
            vcpus=[frozenset(i for i, on in enumerate(m) if on) for m in cpumaps],
            emulator=frozenset(i for i, on in enumerate(emulator) if on),
            shares=sched.get("cpu_shares"),
            quota_us=_quota(sched.get("vcpu_quota")),
        )

    # --- live tuning -------------------------------------------------------------

    def set_cpu_tune(
        self, name: str, shares: int | None, period: int | None, quota: int | None
    ) -> None:
        # Absent values are written as the defaults, so that removing shares:
        # (or the emulator protection) and limit: work live: the kernel's
        # default weight (libvirt maps it for cgroup v2) and -1, no cap.
        params = {
            "cpu_shares": shares if shares is not None else DEFAULT_SHARES,
            **_cap_params(period, quota),
        }
        with _mapped(f"cannot change CPU shares/quota of domain '{name}'"):
            self.handle(name).setSchedulerParametersFlags(params, _MODIFY)

    def vcpu_cap(self, name: str) -> tuple[int | None, int | None]:
        """The running domain's vCPU period and quota in µs (quota -1: no cap)."""
        with _mapped(f"cannot read the CPU quota of domain '{name}'"):
            sched = self.handle(name).schedulerParametersFlags(libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return sched.get("vcpu_period"), _quota(sched.get("vcpu_quota"))

    def set_vcpu_cap(self, name: str, period: int | None, quota: int | None) -> None:
        """Cap (or with None uncap) the running domain's vCPUs, live only: the
        defined domain keeps its planned quota, the shares stay as they are."""
        with _mapped(f"cannot change the CPU quota of domain '{name}'"):
            self.handle(name).setSchedulerParametersFlags(
                _cap_params(period, quota), libvirt.VIR_DOMAIN_AFFECT_LIVE
            )

    def pin_vcpu(self, name: str, vcpu: int, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin vCPU {vcpu} of domain '{name}'"):
            self.handle(name).pinVcpuFlags(vcpu, cpumap, _MODIFY)

    def pin_emulator(self, name: str, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin the emulator threads of domain '{name}'"):
            self.handle(name).pinEmulator(cpumap, _MODIFY)

    def pin_iothread(self, name: str, iothread: int, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin I/O thread {iothread} of domain '{name}'"):
            self.handle(name).pinIOThread(iothread, cpumap, _MODIFY)

    def set_iotune(self, name: str, disk: str, iops: int | None, bps: int | None) -> None:
        params = {"total_iops_sec": iops or 0, "total_bytes_sec": bps or 0}
        with _mapped(f"cannot change the disk limits of domain '{name}'"):
            self.handle(name).setBlockIoTune(disk, params, _MODIFY)

    def set_metadata(self, name: str, meta: KvmctlMetadata) -> None:
        with _mapped(f"cannot update the metadata of domain '{name}'"):
            self.handle(name).setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                _without_namespace(meta),
                KVMCTL_PREFIX,
                KVMCTL_NS,
                _MODIFY,
            )

    # --- guest agent -------------------------------------------------------------

    def agent(
        self, name: str, command: str, arguments: dict[str, object] | None = None, timeout: int = 5
    ) -> object:
        payload: dict[str, object] = {"execute": command}
        if arguments:
            payload["arguments"] = arguments
        with _mapped(f"guest agent of domain '{name}' did not answer {command}"):
            reply = libvirt_qemu.qemuAgentCommand(
                self.handle(name), json.dumps(payload), timeout, 0
            )
        return json.loads(reply).get("return")

    def screenshot(self, name: str) -> bytes:
        """The domain's first screen as the image libvirt sends (PPM or PNG)."""
        dom = self.handle(name)
        stream = self.conn.newStream(0)
        with _mapped(f"cannot take a screenshot of domain '{name}'"):
            dom.screenshot(stream, 0, 0)
            chunks: list[bytes] = []
            stream.recvAll(lambda _s, data, buf: buf.append(data) or 0, chunks)
            stream.finish()
        return b"".join(chunks)
