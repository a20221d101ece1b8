"""Is KVM usable? Decided by booting a tiny guest under it, not by the mere /dev/kvm.

A host can list `<domain type='kvm'/>` in libvirt's capabilities, open
/dev/kvm and still be unable to run an ordinary guest (a nested, paging-based
KVM hangs right after the kernel's real-mode setup). So the only honest test
is to boot the test-guest image with `kvmctl.probe=1` on its command line and
wait for it to print `KVMCTL-PROBE-OK` from user space. When that fails under
KVM, the same guest is booted under TCG, so that a broken image is not
misread as a broken KVM.

The verdict is cached until the host reboots: /run/kvmctl/kvm-probe.json,
keyed by the boot id, the KVM device (path, mode, owner), the libvirt URI and
the sha256 of the image.
"""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol
from xml.etree import ElementTree

from kvmctl.host.facts import KvmStatus, VirtType
from kvmctl.state.paths import run_dir
from kvmctl.state.statefile import write_atomic

PROBE_MARKER = "KVMCTL-PROBE-OK"
PROBE_CMDLINE = "console=ttyS0 kvmctl.probe=1 panic=1 quiet"
PROBE_FLAVOUR = "test-guest"
PROBE_MEMORY_MIB = 128  # the cloud kernel does not unpack itself and its initrd in 64 MiB
DEFAULT_TIMEOUT = 8.0
DEFAULT_DEVICE = Path("/dev/kvm")
CACHE_NAME = "kvm-probe.json"
CACHE_FORMAT = 1
MAKE_IMAGES = "run `make images`"


def kvm_device() -> Path:
    """The KVM device to probe: $KVMCTL_KVM_DEVICE, else /dev/kvm."""
    return Path(os.environ.get("KVMCTL_KVM_DEVICE") or DEFAULT_DEVICE)


# --- the probe image ----------------------------------------------------------


@dataclass(frozen=True)
class ProbeImage:
    kernel: Path
    initrd: Path
    sha256: str  # of kernel and initrd together


def locate_image(flavour: str = PROBE_FLAVOUR) -> tuple[ProbeImage | None, str]:
    """The verified probe image, or None and why not (missing, corrupt)."""
    from kvmctl.errors import KvmctlError
    from kvmctl.host import images

    try:
        found = images.artifacts(flavour)
    except KvmctlError as err:
        reasons = getattr(err, "reasons", [])
        return None, "; ".join([str(err), *reasons])
    sums = [str(found.manifest["artifacts"][name]["sha256"]) for name in images.ARTIFACTS]
    digest = hashlib.sha256(" ".join(sums).encode()).hexdigest()
    return ProbeImage(kernel=found.kernel, initrd=found.initrd, sha256=digest), ""


def probe_domain_xml(
    name: str,
    virt_type: VirtType,
    image: ProbeImage,
    serial_log: Path | None,
    memory_mib: int = PROBE_MEMORY_MIB,
) -> str:
    """A transient, disk-less guest: direct kernel boot, serial console to a
    file (`serial_log`), or to a pty read through libvirt for a host that is
    not this one (None).

    No `<cpu>` element: host-passthrough aborts QEMU on some nested hosts
    ("failed to set MSR 0x10a"), and QEMU's default model runs everywhere.
    """
    from kvmctl.xml import OS, Devices, Domain, Features, MemBalloon, Serial

    domain = Domain(
        type=virt_type,
        name=name,
        description="kvmctl KVM probe guest; removed when the probe ends",
        memory_kib=memory_mib * 1024,
        vcpus=1,
        os=OS(
            machine="pc",
            kernel=str(image.kernel),
            initrd=str(image.initrd),
            cmdline=PROBE_CMDLINE,
        ),
        features=Features(acpi=True),
        on_poweroff="destroy",
        on_reboot="destroy",
        on_crash="destroy",
        devices=Devices(
            serials=(
                Serial(type="file", source_path=str(serial_log), target_port=0)
                if serial_log is not None
                else Serial(type="pty", target_port=0),
            ),
            memballoon=MemBalloon(model="none"),
        ),
    )
    return str(domain.to_xml())


# --- what libvirt and the device say -----------------------------------------


def guest_domain_types(capabilities_xml: str, arch: str) -> set[str]:
    """Domain types (kvm, qemu) libvirt offers for guests of `arch`."""
    root = ElementTree.fromstring(capabilities_xml)
    types: set[str] = set()
    for guest in root.findall("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for dom in arch_el.findall("domain"):
            kind = dom.get("type")
            if kind:
                types.add(kind)
    return types


def parse_qemu_conf_user(text: str) -> tuple[str | None, str | None]:
    """`user = "..."` and `group = "..."` from libvirt's qemu.conf (None when unset)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r'\s*(user|group)\s*=\s*"([^"]*)"', line)
        if m:
            found[m.group(1)] = m.group(2)
    return found.get("user"), found.get("group")


def can_access(mode: int, owner: int, group: int, uid: int, gids: Sequence[int]) -> bool:
    """Read and write permission on a device node for a process with `uid` and `gids`."""
    if uid == 0:
        return True
    rw = stat.S_IRUSR | stat.S_IWUSR
    if owner == uid:
        return mode & rw == rw
    rw = stat.S_IRGRP | stat.S_IWGRP
    if group in gids:
        return mode & rw == rw
    rw = stat.S_IROTH | stat.S_IWOTH
    return mode & rw == rw


def qemu_access_problem(
    device: Path, qemu_conf: Path = Path("/etc/libvirt/qemu.conf")
) -> str | None:
    """Why QEMU, run by libvirt as its unprivileged user, could not open `device`; None if it can.

    libvirt 9 also re-probes QEMU's capabilities without end in this state,
    which stalls every domain start, so it is worth catching before booting.
    """
    try:
        st = device.stat()
    except OSError:
        return None
    user: str | None = None
    group: str | None = None
    try:
        user, group = parse_qemu_conf_user(qemu_conf.read_text())
    except OSError:
        pass
    names = [user] if user else ["libvirt-qemu", "qemu"]
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        gid = pw.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                pass
        gids = os.getgrouplist(name, gid)
        if can_access(st.st_mode, st.st_uid, st.st_gid, pw.pw_uid, gids):
            return None
        return (
            f"{device} ({_owner(st)} {stat.S_IMODE(st.st_mode):04o}) cannot be opened by "
            f"'{name}', the user libvirt runs QEMU as (give it the usual permissions: "
            f"`chgrp kvm {device} && chmod 0660 {device}`)"
        )
    return None  # user unknown: let the boot decide


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"


# --- the verdict ----------------------------------------------------------------


class BootOutcome(Protocol):
    """What the decision needs from a probe boot (the adapter's BootResult)."""

    @property
    def reached(self) -> bool: ...
    @property
    def seconds(self) -> float: ...
    @property
    def start_error(self) -> str | None: ...
    @property
    def stopped_early(self) -> bool: ...


Booter = Callable[[VirtType], BootOutcome]


@dataclass(frozen=True)
class KvmVerdict:
    status: KvmStatus
    reason: str
    virt_type: VirtType
    probed: bool = False  # a guest was booted for this verdict (now or before, if cached)
    cached: bool = False
    kvm_seconds: float | None = None  # to the marker, or to giving up
    tcg_seconds: float | None = None
    tcg_ok: bool | None = None  # None: not tried
    blocking: bool = False  # no virt type proven to work (or no image to tell): doctor fails


def _failure(outcome: BootOutcome, timeout: float) -> str:
    if outcome.start_error:
        return f"libvirt could not start it: {outcome.start_error}"
    if outcome.stopped_early:
        return f"it stopped after {outcome.seconds:.1f} s without reaching user space"
    return f"it did not reach user space within {timeout:g} s"


def decide_kvm(
    device: Path,
    domain_types: set[str],
    image: ProbeImage | None,
    boot: Booter | None,
    timeout: float = DEFAULT_TIMEOUT,
    access_problem: str | None = None,
    image_problem: str = "",
) -> KvmVerdict:
    """The KVM status from the facts at hand and, when they do not settle it, probe boots."""
    tcg = "qemu" in domain_types
    no_tcg = "" if tcg else ", and libvirt offers no TCG (domain type 'qemu') either"
    if not device.exists():
        return KvmVerdict(
            "absent",
            f"{device} does not exist (no KVM module loaded, or no VT-x/AMD-V){no_tcg}",
            "qemu",
            blocking=not tcg,
        )
    if "kvm" not in domain_types:
        return KvmVerdict(
            "absent",
            f"{device} exists but libvirt does not offer domain type 'kvm'{no_tcg}",
            "qemu",
            blocking=not tcg,
        )
    if access_problem:
        return KvmVerdict("present-but-unusable", access_problem + no_tcg, "qemu", blocking=not tcg)
    if image is None or boot is None:
        return KvmVerdict(
            "present-but-unusable",
            f"{device} exists and libvirt offers KVM, but no guest was booted to prove it: "
            f"{image_problem or 'the probe image is not built'} ({MAKE_IMAGES})",
            "qemu",
            blocking=True,
        )
    kvm = boot("kvm")
    if kvm.reached:
        return KvmVerdict(
            "usable",
            f"a probe guest reached user space under KVM in {kvm.seconds:.2f} s",
            "kvm",
            probed=True,
            kvm_seconds=kvm.seconds,
        )
    why = _failure(kvm, timeout)
    if not tcg:
        return KvmVerdict(
            "present-but-unusable",
            f"{device} exists but a probe guest failed under KVM ({why}), "
            "and libvirt offers no TCG to fall back on",
            "qemu",
            probed=True,
            kvm_seconds=kvm.seconds,
            blocking=True,
        )
    emu = boot("qemu")
    if emu.reached:
        return KvmVerdict(
            "present-but-unusable",
            f"{device} exists but a probe guest failed under KVM: {why} "
            f"(it does under TCG in {emu.seconds:.1f} s)",
            "qemu",
            probed=True,
            kvm_seconds=kvm.seconds,
            tcg_seconds=emu.seconds,
            tcg_ok=True,
        )
    return KvmVerdict(
        "present-but-unusable",
        f"a probe guest failed under KVM ({why}) and under TCG ({_failure(emu, timeout)}), "
        f"so the probe image in {image.kernel.parent} is suspect ({MAKE_IMAGES})",
        "qemu",
        probed=True,
        kvm_seconds=kvm.seconds,
        tcg_seconds=emu.seconds,
        tcg_ok=False,
        blocking=True,
    )


# --- the per-boot cache ------------------------------------------------------------


def cache_key(boot_id: str, device: Path, uri: str, image_sha256: str) -> dict[str, str]:
    try:
        st = device.stat()
        node = f"{stat.S_IMODE(st.st_mode):o}:{st.st_uid}:{st.st_gid}:{st.st_rdev}"
    except OSError:
        node = "missing"
    return {
        "format": str(CACHE_FORMAT),
        "boot_id": boot_id,
        "device": str(device),
        "device_node": node,
        "uri": uri,
        "image_sha256": image_sha256,
    }


def load_cached(path: Path, key: dict[str, str]) -> KvmVerdict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    try:
        fields = dict(data["verdict"])
        fields["cached"] = True
        return KvmVerdict(**fields)
    except (KeyError, TypeError):
        return None


def store_cached(path: Path, key: dict[str, str], verdict: KvmVerdict) -> None:
    """Write the verdict atomically; a read-only /run only costs the next run a probe."""
    record = {"key": key, "verdict": asdict(verdict), "written_at": time.time()}
    with suppress(OSError):
        write_atomic(path, json.dumps(record, indent=2))


# --- wiring ---------------------------------------------------------------------------

BootFn = Callable[[str, Path, str, float], BootOutcome]  # (XML, serial log, marker, timeout)


def libvirt_booter(
    boot_xml: BootFn, image: ProbeImage, timeout: float, workdir: Path | None = None
) -> Booter:
    """A Booter that boots the probe image through `boot_xml` (Libvirt.boot_until_marker)."""

    def boot(virt_type: VirtType) -> BootOutcome:
        base = workdir or run_dir()
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"probe-{virt_type}-", dir=base))
        try:
            log = tmp / "serial.log"
            name = f"kvmctl-probe-{virt_type}-{os.getpid()}-{tmp.name[-6:]}"
            name = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
            xml = probe_domain_xml(name, virt_type, image, log)
            return boot_xml(xml, log, PROBE_MARKER, timeout)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return boot


Source = Literal["booted", "cached", "not-probed"]


def source_of(verdict: KvmVerdict) -> Source:
    if verdict.cached:
        return "cached"
    return "booted" if verdict.probed else "not-probed"
