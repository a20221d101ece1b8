"""The KVM probe guest: the verified test-guest image and the transient,
disk-less domain that boots it with `kvmctl.probe=1` (kvmctl.host.kvmprobe
decides from its boots).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kvmctl.host.facts import VirtType

PROBE_MARKER = "KVMCTL-PROBE-OK"
PROBE_CMDLINE = "console=ttyS0 kvmctl.probe=1 panic=1 quiet"
PROBE_FLAVOUR = "test-guest"
PROBE_MEMORY_MIB = 128  # the cloud kernel does not unpack itself and its initrd in 64 MiB


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
