"""``<domain>``: one virtual machine definition.

Build one from the blocks in this package and call ``to_xml()``; parse
libvirt's ``XMLDesc()`` with ``Domain.from_xml()``. Sizes are KiB.
"""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, value
from kvmctl.xml.convert import INT
from kvmctl.xml.cputune import CPUTune
from kvmctl.xml.devices import Devices
from kvmctl.xml.machine import CPU, OS, Clock, Features
from kvmctl.xml.memory import MemoryBacking, MemTune, NumaTune
from kvmctl.xml.metadata import Metadata
from kvmctl.xml.names import validate_cpuset, validate_domain_name, validate_uuid

Lifecycle = Literal["destroy", "restart", "preserve", "rename-restart"]
CrashAction = Literal[
    "destroy", "restart", "preserve", "rename-restart", "coredump-destroy", "coredump-restart"
]


class Domain(XMLModel, tag="domain"):
    """``type='kvm'`` where KVM can boot guests, ``'qemu'`` (TCG) elsewhere."""

    type: Literal["kvm", "qemu"] = value("@type")
    name: str = value("name")
    uuid: str | None = value("uuid", default=None)
    title: str | None = value("title", default=None)
    description: str | None = value("description", default=None)
    metadata: Metadata | None = child(Metadata, default=None)
    memory_kib: int = value("memory", INT, unit="KiB")
    current_memory_kib: int | None = value("currentMemory", INT, unit="KiB", default=None)
    memtune: MemTune | None = child(MemTune, default=None)
    memory_backing: MemoryBacking | None = child(MemoryBacking, default=None)
    vcpus: int = value("vcpu", INT)
    vcpu_placement: Literal["static", "auto"] | None = value("vcpu/@placement", default=None)
    vcpu_cpuset: str | None = value("vcpu/@cpuset", default=None)
    iothreads: int | None = value("iothreads", INT, default=None)
    cputune: CPUTune | None = child(CPUTune, default=None)
    numatune: NumaTune | None = child(NumaTune, default=None)
    os: OS = child(OS, default=OS())
    features: Features | None = child(Features, default=None)
    cpu: CPU | None = child(CPU, default=None)
    clock: Clock | None = child(Clock, default=None)
    on_poweroff: Lifecycle | None = value("on_poweroff", default=None)
    on_reboot: Lifecycle | None = value("on_reboot", default=None)
    on_crash: CrashAction | None = value("on_crash", default=None)
    devices: Devices = child(Devices, default=Devices())

    def _validate(self) -> None:
        validate_domain_name(self.name)
        if self.uuid is not None:
            validate_uuid(self.uuid)
        if self.title is not None and "\n" in self.title:
            raise ValueError(f"domain {self.name}: a title must be a single line")
        if self.vcpu_cpuset is not None:
            validate_cpuset(self.vcpu_cpuset)
        if self.memory_kib <= 0 or self.vcpus <= 0:
            raise ValueError(f"domain {self.name}: memory and vcpus must be positive")
        if self.current_memory_kib is not None and self.current_memory_kib > self.memory_kib:
            raise ValueError(f"domain {self.name}: currentMemory exceeds memory")
        self._check_cputune()
        if self.numatune is not None and self.numatune.memnodes:
            cells = {c.id for c in self.cpu.numa_cells} if self.cpu else set()
            missing = [n.cellid for n in self.numatune.memnodes if n.cellid not in cells]
            if missing:
                raise ValueError(
                    f"domain {self.name}: memnode for guest NUMA cell {missing[0]}, "
                    "which cpu.numa_cells does not define"
                )

    def _check_cputune(self) -> None:
        # Pins naming vCPUs or I/O threads the domain does not have are
        # rejected by libvirt only when the domain is defined; catch them here.
        if self.cputune is None:
            return
        for pin in self.cputune.vcpupins:
            if pin.vcpu >= self.vcpus:
                raise ValueError(f"domain {self.name}: vcpupin for vCPU {pin.vcpu} of {self.vcpus}")
        for iopin in self.cputune.iothreadpins:
            if not 1 <= iopin.iothread <= (self.iothreads or 0):
                raise ValueError(
                    f"domain {self.name}: iothreadpin for I/O thread {iopin.iothread}, "
                    f"domain has {self.iothreads or 0}"
                )
