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

import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

from kvmctl.host.facts import KvmStatus, VirtType
from kvmctl.host.probeguest import PROBE_MARKER, ProbeImage, probe_domain_xml
from kvmctl.state.paths import run_dir
from kvmctl.state.statefile import write_atomic

DEFAULT_TIMEOUT = 8.0
# The TCG boot only proves the probe image once KVM has failed; under TCG on a
# busy 2-CPU host the tiny guest has been seen to need more than 8 s, and a
# "suspect image" verdict for a loaded host is wrong (doctor fails, exit 3).
TCG_TIMEOUT = 30.0


def boot_timeout(virt_type: VirtType, timeout: float) -> float:
    return timeout if virt_type == "kvm" else max(timeout, TCG_TIMEOUT)


DEFAULT_DEVICE = Path("/dev/kvm")
CACHE_NAME = "kvm-probe.json"
CACHE_FORMAT = 1
MAKE_IMAGES = "run `make images`"


def kvm_device() -> Path:
    """The KVM device to probe: $KVMCTL_KVM_DEVICE, else /dev/kvm."""
    return Path(os.environ.get("KVMCTL_KVM_DEVICE") or DEFAULT_DEVICE)


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
        f"a probe guest failed under KVM ({why}) and under TCG "
        f"({_failure(emu, boot_timeout('qemu', timeout))}), "
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
            return boot_xml(xml, log, PROBE_MARKER, boot_timeout(virt_type, timeout))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    return boot


Source = Literal["booted", "cached", "not-probed"]


def source_of(verdict: KvmVerdict) -> Source:
    if verdict.cached:
        return "cached"
    return "booted" if verdict.probed else "not-probed"
