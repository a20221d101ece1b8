"""The virtual platform: ``<os>``, ``<features>``, ``<cpu>`` and ``<clock>``."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, children, flag, value, values
from kvmctl.xml.convert import INT, ONOFF, YESNO
from kvmctl.xml.names import validate_cpuset

BootDevice = Literal["hd", "cdrom", "network", "fd"]


class OS(XMLModel, tag="os"):
    """Firmware boot from ``boot_devices``, or direct kernel boot when `kernel` is set."""

    type: Literal["hvm"] = value("type", default="hvm")
    arch: str | None = value("type/@arch", default="x86_64")
    machine: str | None = value("type/@machine", default=None)
    kernel: str | None = value("kernel", default=None)
    initrd: str | None = value("initrd", default=None)
    cmdline: str | None = value("cmdline", default=None)
    boot_devices: tuple[BootDevice, ...] = values("boot/@dev")

    def _validate(self) -> None:
        if (self.initrd is not None or self.cmdline is not None) and self.kernel is None:
            raise ValueError("os: initrd and cmdline need a kernel")


class Features(XMLModel, tag="features"):
    acpi: bool = flag("acpi")
    apic: bool = flag("apic")
    pae: bool = flag("pae")


class CPUFeature(XMLModel, tag="feature"):
    policy: Literal["force", "require", "optional", "disable", "forbid"] = value("@policy")
    name: str = value("@name")


class NumaCell(XMLModel, tag="cell"):
    """One guest NUMA node: which vCPUs and how much memory (KiB) it has."""

    id: int = value("@id", INT)
    cpus: str = value("@cpus")
    memory_kib: int = value("@memory", INT, unit="KiB")

    def _validate(self) -> None:
        validate_cpuset(self.cpus)


class CPU(XMLModel, tag="cpu"):
    """``host-passthrough`` is fastest where KVM works; ``custom`` with model
    ``qemu64`` or ``max`` is what TCG (``<domain type='qemu'>``) can run."""

    mode: Literal["custom", "host-model", "host-passthrough", "maximum"] | None = value(
        "@mode", default=None
    )
    match: Literal["minimum", "exact", "strict"] | None = value("@match", default=None)
    check: Literal["none", "partial", "full"] | None = value("@check", default=None)
    migratable: bool | None = value("@migratable", ONOFF, default=None)
    model: str | None = value("model", default=None)
    model_fallback: Literal["allow", "forbid"] | None = value("model/@fallback", default=None)
    sockets: int | None = value("topology/@sockets", INT, default=None)
    dies: int | None = value("topology/@dies", INT, default=None)
    cores: int | None = value("topology/@cores", INT, default=None)
    threads: int | None = value("topology/@threads", INT, default=None)
    features: tuple[CPUFeature, ...] = children(CPUFeature, default=())
    numa_cells: tuple[NumaCell, ...] = children(NumaCell, "numa", default=())

    def _validate(self) -> None:
        if self.migratable is not None and self.mode not in ("host-passthrough", "maximum"):
            raise ValueError("cpu: migratable applies to host-passthrough and maximum modes only")
        topology = (self.sockets, self.cores, self.threads)
        if any(t is not None for t in topology) and None in topology:
            raise ValueError("cpu: topology needs sockets, cores and threads together")


class Timer(XMLModel, tag="timer"):
    name: Literal["platform", "pit", "rtc", "hpet", "tsc", "kvmclock", "hypervclock"] = value(
        "@name"
    )
    tickpolicy: Literal["delay", "catchup", "merge", "discard"] | None = value(
        "@tickpolicy", default=None
    )
    present: bool | None = value("@present", YESNO, default=None)


class Clock(XMLModel, tag="clock"):
    offset: Literal["utc", "localtime", "timezone", "variable"] = value("@offset", default="utc")
    timers: tuple[Timer, ...] = children(Timer, default=())
