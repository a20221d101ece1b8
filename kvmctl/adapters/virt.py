"""Domains, storage and live tuning through libvirt-python.

A thin mapping layer: every call takes names and XML text from the planner's
objects, and libvirt errors come out as kvmctl errors with a sentence that
names the domain, volume or pool.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu
from lxml import etree

from kvmctl.adapters.events import ensure_event_loop
from kvmctl.adapters.libvirt import open_virconnect
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.errors import ApplyError, HostError
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


@contextmanager
def _mapped(what: str, kind: type[Exception] = ApplyError) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as err:
        raise kind(f"{what}: {err.get_error_message()}") from None


def open_connection(uri: str) -> libvirt.virConnect:
    """Open `uri` with the event loop running (domain events and console
    streams need it), mapped errors, and keepalive so a dead daemon or host is
    noticed within ~15 s instead of hanging a call."""
    ensure_event_loop()
    conn = open_virconnect(uri)
    conn.setKeepAlive(5, 3)
    return conn


# How long a dead connection is retried: long enough for a daemon restart.
RECONNECT_SECONDS = 30.0


class Virt:
    """Domain and storage calls on one connection. When the daemon restarts
    (the connection dies), the next call opens a new one, so an apply that
    fails because of it can still roll back."""

    def __init__(self, conn: libvirt.virConnect):
        self._conn = conn
        try:
            self.uri: str | None = conn.getURI()
        except libvirt.libvirtError:
            self.uri = None  # dead already: calls fail as they would have
        self._reconnect = threading.Lock()
        self._gave_up = False  # after one failed reconnect, fail at once
        # libvirt refuses to refresh a pool while a volume is being created in
        # it ("asynchronous jobs running"): storage calls go one at a time.
        self._storage = threading.RLock()

    @property
    def conn(self) -> libvirt.virConnect:
        with self._reconnect:
            if self.uri is None or self._conn.isAlive() == 1:
                return self._conn
            deadline = time.monotonic() + (0 if self._gave_up else RECONNECT_SECONDS)
            while True:
                try:
                    self._conn = open_connection(self.uri)
                    self._gave_up = False
                    return self._conn
                except HostError:
                    if time.monotonic() >= deadline:
                        self._gave_up = True
                        raise
                    time.sleep(0.5)

    def alive(self) -> bool:
        """Whether the connection still answers, without reconnecting."""
        try:
            return bool(self._conn.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Close the current connection (a dead one too); no reconnect."""
        with self._reconnect, suppress(libvirt.libvirtError):
            self._conn.close()

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

    def xml(self, name: str, inactive: bool = False) -> str:
        dom = self._get(name)
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        with _mapped(f"cannot read the XML of domain '{name}'"):
            return str(dom.XMLDesc(flags))

    def _get(self, name: str) -> libvirt.virDomain:
        dom = self.lookup(name)
        if dom is None:
            raise ApplyError(f"domain '{name}' does not exist")
        return dom

    def define(self, xml: str) -> None:
        self.ensure_log_dirs(xml)
        with _mapped("cannot define domain"):
            self.conn.defineXML(xml)

    def start_paused(self, name: str) -> None:
        dom = self._get(name)
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
            self._get(name).resume()

    def stop(self, name: str) -> None:
        """Power off at once: the set's VMs keep no state worth a clean shutdown
        outside /data, which is on a journaled disk."""
        dom = self.lookup(name)
        if dom is None or not dom.isActive():
            return
        with _mapped(f"cannot stop domain '{name}'"):
            try:
                dom.destroy()
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_OPERATION_INVALID:
                    raise

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
        dom = self._get(name)
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
        params: dict[str, int] = {}
        if shares is not None:
            params["cpu_shares"] = shares
        # An absent cap is written as -1 (unlimited) so removing limit: works live.
        params["vcpu_quota"] = quota if quota is not None else -1
        if period is not None:
            params["vcpu_period"] = period
        with _mapped(f"cannot change CPU shares/quota of domain '{name}'"):
            self._get(name).setSchedulerParametersFlags(params, _MODIFY)

    def pin_vcpu(self, name: str, vcpu: int, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin vCPU {vcpu} of domain '{name}'"):
            self._get(name).pinVcpuFlags(vcpu, cpumap, _MODIFY)

    def pin_emulator(self, name: str, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin the emulator threads of domain '{name}'"):
            self._get(name).pinEmulator(cpumap, _MODIFY)

    def pin_iothread(self, name: str, iothread: int, cpus: frozenset[int], ncpus: int) -> None:
        cpumap = tuple(i in cpus for i in range(ncpus))
        with _mapped(f"cannot pin I/O thread {iothread} of domain '{name}'"):
            self._get(name).pinIOThread(iothread, cpumap, _MODIFY)

    def set_iotune(self, name: str, disk: str, iops: int | None, bps: int | None) -> None:
        params = {"total_iops_sec": iops or 0, "total_bytes_sec": bps or 0}
        with _mapped(f"cannot change the disk limits of domain '{name}'"):
            self._get(name).setBlockIoTune(disk, params, _MODIFY)

    def set_metadata(self, name: str, meta: KvmctlMetadata) -> None:
        with _mapped(f"cannot update the metadata of domain '{name}'"):
            self._get(name).setMetadata(
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
            reply = libvirt_qemu.qemuAgentCommand(self._get(name), json.dumps(payload), timeout, 0)
        return json.loads(reply).get("return")

    # --- storage -------------------------------------------------------------------

    def ensure_pool(self, xml: str, name: str) -> bool:
        """Define, build, start and autostart a dir pool if missing. True if created."""
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            pool = None
        created = False
        with _mapped(f"cannot set up storage pool '{name}'", HostError):
            if pool is None:
                pool = self.conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
                created = True
            elif self._pool_dir_gone(pool):
                # Its directory was removed behind libvirt's back: every volume
                # call would fail with "No such file or directory". libvirt
                # builds (makes the directory of) inactive pools only.
                if pool.isActive():
                    pool.destroy()
                pool.build(0)
            if not pool.isActive():
                pool.create(0)
            pool.setAutostart(1)
        return created

    def _pool_dir_gone(self, pool: libvirt.virStoragePool) -> bool:
        if self.uri is None or is_remote(self.uri):
            return False
        target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("target/path")
        return target is not None and not Path(target).is_dir()

    def remove_pool(self, name: str) -> None:
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return
        with _mapped(f"cannot remove storage pool '{name}'"):
            if pool.isActive():
                pool.destroy()
            pool.undefine()

    def volume_exists(self, pool: str, name: str) -> bool:
        with self._storage:
            return self._volume(pool, name) is not None

    def volume_capacity(self, pool: str, name: str) -> int | None:
        with self._storage:
            vol = self._volume(pool, name)
            return None if vol is None else int(vol.info()[1])

    def pool_xml(self, name: str) -> str | None:
        """The pool's definition without its UUID (to define it elsewhere)."""
        try:
            xml = self.conn.storagePoolLookupByName(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
        except libvirt.libvirtError:
            return None
        root = etree.fromstring(xml.encode())
        for node in root.findall("uuid"):
            root.remove(node)
        return str(etree.tostring(root, encoding="unicode"))

    def pool_available(self, name: str) -> int | None:
        """Free bytes in an active pool; None when there is no such pool."""
        try:
            pool = self.conn.storagePoolLookupByName(name)
            return int(pool.info()[3]) if pool.isActive() else 0
        except libvirt.libvirtError:
            return None

    def _volume(self, pool: str, name: str) -> libvirt.virStorageVol | None:
        try:
            p = self.conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None  # no pool, no volume
            raise ApplyError(f"cannot look up pool '{pool}': {err.get_error_message()}") from None
        # A file made outside libvirt (or by a killed run) shows after a
        # refresh; so does one deleted by another host's libvirtd on shared
        # storage, which this pool still lists until then.
        for refresh in (False, True):
            if refresh:
                with _mapped(f"cannot refresh storage pool '{pool}'"):
                    p.refresh(0)
            try:
                vol = p.storageVolLookupByName(name)
                if not refresh:
                    vol.info()  # stats the file: fails for a listed file that is gone
                return vol
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL or not refresh:
                    continue  # not listed, or listed but gone: look after a refresh
                raise ApplyError(
                    f"cannot look up volume '{name}' in pool '{pool}': {err.get_error_message()}"
                ) from None
        return None

    def create_volume(self, pool: str, xml: str) -> None:
        with self._storage, _mapped(f"cannot create a volume in pool '{pool}'"):
            self.conn.storagePoolLookupByName(pool).createXML(xml, 0)

    def upload_volume(self, pool: str, xml: str, data: bytes) -> None:
        """Create a volume and fill it with `data` through libvirt's stream
        upload, which works the same on a remote host."""
        with self._storage, _mapped(f"cannot create a volume in pool '{pool}'"):
            vol = self.conn.storagePoolLookupByName(pool).createXML(xml, 0)
        stream = self.conn.newStream(0)
        with _mapped(f"cannot upload to volume '{vol.name()}' in pool '{pool}'"):
            vol.upload(stream, 0, len(data), 0)
            stream.sendAll(lambda _st, nbytes, buf: buf.read(nbytes), io.BytesIO(data))
            stream.finish()

    def download_volume(self, pool: str, name: str) -> bytes:
        vol = self._volume(pool, name)
        if vol is None:
            raise ApplyError(f"volume '{name}' of pool '{pool}' does not exist")
        stream = self.conn.newStream(0)
        chunks: list[bytes] = []
        with _mapped(f"cannot read volume '{name}' of pool '{pool}'"):
            vol.download(stream, 0, 0, 0)
            stream.recvAll(lambda _st, data, buf: buf.append(data), chunks)
            stream.finish()
        return b"".join(chunks)

    def delete_volume(self, pool: str, name: str) -> None:
        with self._storage:
            vol = self._volume(pool, name)
            if vol is None:
                return
            with _mapped(f"cannot delete volume '{name}' of pool '{pool}'"):
                vol.delete(0)

    def screenshot(self, name: str) -> bytes:
        """The domain's first screen as the image libvirt sends (PPM or PNG)."""
        dom = self._get(name)
        stream = self.conn.newStream(0)
        with _mapped(f"cannot take a screenshot of domain '{name}'"):
            dom.screenshot(stream, 0, 0)
            chunks: list[bytes] = []
            stream.recvAll(lambda _s, data, buf: buf.append(data) or 0, chunks)
            stream.finish()
        return b"".join(chunks)
