"""Make a running domain's tunables those of a domain definition: CPU shares
and quota, vCPU/emulator/I/O thread pins, disk I/O limits and kvmctl's
metadata, all of which libvirt changes live (the "live" settings groups of
kvmctl.planner.diff)."""

from __future__ import annotations

from kvmctl.adapters.virt import Virt
from kvmctl.planner.cpuset import parse_cpuset
from kvmctl.xml.domain import Domain


def retune(virt: Virt, name: str, dom: Domain, host_cpus: int) -> None:
    tune = dom.cputune
    if tune is not None:
        virt.set_cpu_tune(name, tune.shares, tune.period, tune.quota)
        for pin in tune.vcpupins:
            virt.pin_vcpu(name, pin.vcpu, parse_cpuset(pin.cpuset), host_cpus)
        if tune.emulatorpin:
            virt.pin_emulator(name, parse_cpuset(tune.emulatorpin), host_cpus)
        for io in tune.iothreadpins:
            virt.pin_iothread(name, io.iothread, parse_cpuset(io.cpuset), host_cpus)
    for disk in dom.devices.disks:
        io_limits = disk.iotune
        virt.set_iotune(
            name,
            disk.target_dev,
            io_limits.total_iops_sec if io_limits else None,
            io_limits.total_bytes_sec if io_limits else None,
        )
    if dom.metadata is not None and dom.metadata.kvmctl is not None:
        virt.set_metadata(name, dom.metadata.kvmctl)
