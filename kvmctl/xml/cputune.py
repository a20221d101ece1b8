"""``<cputune>``: pinning, CFS shares/quota and real-time scheduling."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, children, value
from kvmctl.xml.convert import INT
from kvmctl.xml.names import validate_cpuset

Scheduler = Literal["fifo", "rr", "other", "batch", "idle"]
_REALTIME = ("fifo", "rr")


def _check_sched(owner: str, scheduler: str, priority: int | None) -> None:
    # libvirt only takes a priority for the real-time policies and needs one there.
    if scheduler in _REALTIME:
        if priority is None or not 1 <= priority <= 99:
            raise ValueError(f"{owner}: scheduler {scheduler!r} needs a priority from 1 to 99")
    elif priority is not None:
        raise ValueError(f"{owner}: scheduler {scheduler!r} takes no priority")


class VCPUPin(XMLModel, tag="vcpupin"):
    vcpu: int = value("@vcpu", INT)
    cpuset: str = value("@cpuset")

    def _validate(self) -> None:
        validate_cpuset(self.cpuset)


class IOThreadPin(XMLModel, tag="iothreadpin"):
    iothread: int = value("@iothread", INT)
    cpuset: str = value("@cpuset")

    def _validate(self) -> None:
        validate_cpuset(self.cpuset)


class VCPUSched(XMLModel, tag="vcpusched"):
    """``vcpus`` uses cpuset syntax over vCPU ids, e.g. ``0-1``."""

    vcpus: str = value("@vcpus")
    scheduler: Scheduler = value("@scheduler")
    priority: int | None = value("@priority", INT, default=None)

    def _validate(self) -> None:
        validate_cpuset(self.vcpus)
        _check_sched("vcpusched", self.scheduler, self.priority)


class IOThreadSched(XMLModel, tag="iothreadsched"):
    iothreads: str = value("@iothreads")
    scheduler: Scheduler = value("@scheduler")
    priority: int | None = value("@priority", INT, default=None)

    def _validate(self) -> None:
        validate_cpuset(self.iothreads)
        _check_sched("iothreadsched", self.scheduler, self.priority)


class EmulatorSched(XMLModel, tag="emulatorsched"):
    scheduler: Scheduler = value("@scheduler")
    priority: int | None = value("@priority", INT, default=None)

    def _validate(self) -> None:
        _check_sched("emulatorsched", self.scheduler, self.priority)


class CPUTune(XMLModel, tag="cputune"):
    """Periods and quotas are in microseconds; a quota of -1 means unlimited.
    Field order is libvirt's own, so read-back XML diffs cleanly. libvirt
    splits a ``vcpusched`` over several vCPUs into one per vCPU on define."""

    shares: int | None = value("shares", INT, default=None)
    period: int | None = value("period", INT, default=None)
    quota: int | None = value("quota", INT, default=None)
    global_period: int | None = value("global_period", INT, default=None)
    global_quota: int | None = value("global_quota", INT, default=None)
    emulator_period: int | None = value("emulator_period", INT, default=None)
    emulator_quota: int | None = value("emulator_quota", INT, default=None)
    iothread_period: int | None = value("iothread_period", INT, default=None)
    iothread_quota: int | None = value("iothread_quota", INT, default=None)
    vcpupins: tuple[VCPUPin, ...] = children(VCPUPin, default=())
    emulatorpin: str | None = value("emulatorpin/@cpuset", default=None)
    iothreadpins: tuple[IOThreadPin, ...] = children(IOThreadPin, default=())
    emulatorsched: EmulatorSched | None = child(EmulatorSched, default=None)
    vcpuscheds: tuple[VCPUSched, ...] = children(VCPUSched, default=())
    iothreadscheds: tuple[IOThreadSched, ...] = children(IOThreadSched, default=())

    def _validate(self) -> None:
        if self.emulatorpin is not None:
            validate_cpuset(self.emulatorpin)
