"""VmPlan -> libvirt domain and volume XML objects (pure).

What the guest is promised lives here as XML: pins, hugepages, shares, caps,
I/O limits, watchdog. Real-time needs one exception: on hosts with RT group
scheduling a domain with <vcpusched> cannot start (its fresh cgroups have no
RT budget), so there apply sets the policy on the vCPU thread after giving
the cgroups a budget, and the XML carries no <vcpusched>.
"""

from __future__ import annotations

import uuid

from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.plan import VmPlan
from kvmctl.spec.channels import MIB
from kvmctl.xml.chardev import Channel, Console, Serial
from kvmctl.xml.cputune import CPUTune, IOThreadPin, VCPUPin, VCPUSched
from kvmctl.xml.devices import RNG, Devices, MemBalloon, Panic, Shmem, Vsock, Watchdog
from kvmctl.xml.disk import Disk, IOTune
from kvmctl.xml.display import Graphics, Video
from kvmctl.xml.domain import CrashAction, Domain
from kvmctl.xml.interface import Interface
from kvmctl.xml.machine import CPU, OS, Clock, Features
from kvmctl.xml.memory import HugePage, MemoryBacking, MemTune
from kvmctl.xml.metadata import KvmctlMetadata, Metadata
from kvmctl.xml.storage import BackingStore, StorageVolume

IOTHREAD = 1


def domain_uuid(set_name: str, vm: str) -> str:
    """Stable per set and VM: a re-created domain keeps its identity."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmctl:{set_name}/{vm}"))


def on_crash_for(restart_policy: str) -> CrashAction:
    """What libvirt does when the guest kernel panics (pvpanic) for a restart policy.

    `always` / `on-failure`: reset in place (libvirt emits CRASHED/PANICKED,
    then resets the same QEMU process). The VM comes back without a supervisor
    too, and keeps its hugepages, real-time threads and NIC shaping; a
    supervisor counts the reset against the budget and powers the VM off once
    it gives up. `never`: the VM is left shut off (reason crashed), as the
    policy says. No coredump-*: a memory dump of every panic delays the
    reset by seconds and fills the disk in a panic loop.
    """
    return "destroy" if restart_policy == "never" else "restart"


def build_domain(plan: VmPlan, rt_by_thread: bool) -> Domain:
    """`rt_by_thread`: the host has RT group scheduling, so real-time is set on
    the vCPU threads by apply instead of through <vcpusched>."""
    vm = plan.vm
    memory_kib = vm.memory.size // 1024
    return Domain(
        type=plan.virt_type,
        name=plan.domain,
        uuid=domain_uuid(plan.set_name, plan.name),
        title=f"{plan.set_name}/{plan.name}",
        metadata=Metadata(kvmctl=_metadata(plan)),
        memory_kib=memory_kib,
        current_memory_kib=memory_kib,
        memtune=_memtune(plan),
        memory_backing=_memory_backing(plan),
        vcpus=vm.vcpus,
        vcpu_placement="static",
        vcpu_cpuset=format_cpuset(plan.placement.cpus),
        iothreads=IOTHREAD,
        cputune=_cputune(plan, rt_by_thread),
        os=OS(
            machine="pc",
            kernel=plan.kernel,
            initrd=plan.initrd,
            cmdline=plan.cmdline,
            boot_devices=() if plan.kernel else ("hd",),
        ),
        features=Features(acpi=True, apic=True),
        # host-passthrough can abort QEMU on nested hosts (unknown MSRs), and
        # host-model keeps a guest migratable between unlike hosts.
        cpu=CPU(mode="host-model", check="partial") if plan.virt_type == "kvm" else None,
        clock=Clock(offset="utc"),
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash=on_crash_for(vm.restart.policy),
        devices=_devices(plan),
    )


def build_volume(plan: VmPlan) -> StorageVolume:
    vol = plan.volume
    backing = BackingStore(path=vol.backing, format="qcow2") if vol.backing else None
    return StorageVolume(
        name=vol.name,
        capacity_bytes=vol.capacity,
        allocation_bytes=0,
        format="qcow2",
        backing_store=backing,
    )


def _metadata(plan: VmPlan) -> KvmctlMetadata:
    fp = plan.fingerprint
    return KvmctlMetadata(
        set_name=plan.set_name,
        vm_name=plan.name,
        spec_hash=plan.spec_hash,
        role=plan.vm.role,
        criticality=plan.vm.criticality,
        restart_hash=fp.restart_hash,
        live_hash=fp.live_hash,
        groups=";".join(f"{k}={v}" for k, v in sorted(fp.groups.items())),
        dedicated=format_cpuset(plan.placement.cpus | plan.placement.claimed)
        if plan.placement.dedicated
        else None,
        vsock_cid=plan.channels.vsocks[0].cid if plan.channels.vsocks else None,
    )


def _memtune(plan: VmPlan) -> MemTune | None:
    mem = plan.vm.memory
    if mem.soft_limit is None and mem.hard_limit is None:
        return None
    return MemTune(
        soft_limit_kib=mem.soft_limit // 1024 if mem.soft_limit else None,
        hard_limit_kib=mem.hard_limit // 1024 if mem.hard_limit else None,
    )


def _memory_backing(plan: VmPlan) -> MemoryBacking | None:
    mem = plan.vm.memory
    if not mem.hugepages and not mem.locked:
        return None
    pages = (HugePage(size_kib=mem.hugepages // 1024),) if mem.hugepages else None
    # Reserved means reserved: fault every page in at start, not on first touch.
    return MemoryBacking(
        hugepages=pages,
        locked=mem.locked,
        allocation_mode="immediate" if mem.hugepages else None,
    )


def _cputune(plan: VmPlan, rt_by_thread: bool) -> CPUTune:
    placement = plan.placement
    scheds: tuple[VCPUSched, ...] = ()
    if plan.realtime is not None and not rt_by_thread:
        scheds = (
            VCPUSched(
                vcpus=f"0-{plan.vm.vcpus - 1}" if plan.vm.vcpus > 1 else "0",
                scheduler=plan.realtime.policy,
                priority=plan.realtime.priority,
            ),
        )
    return CPUTune(
        vcpupins=tuple(
            VCPUPin(vcpu=i, cpuset=format_cpuset(cpus))
            for i, cpus in enumerate(placement.vcpu_pins)
        ),
        emulatorpin=format_cpuset(placement.emulator),
        iothreadpins=(IOThreadPin(iothread=IOTHREAD, cpuset=format_cpuset(placement.iothread)),),
        shares=plan.shares,
        period=plan.period_us,
        quota=plan.quota_us,
        vcpuscheds=scheds,
    )


def _devices(plan: VmPlan) -> Devices:
    vm = plan.vm
    iotune = None
    if vm.disk.iops_limit or vm.disk.bps_limit:
        iotune = IOTune(total_iops_sec=vm.disk.iops_limit, total_bytes_sec=vm.disk.bps_limit)
    disk = Disk(
        type="volume",
        device="disk",
        driver_name="qemu",
        driver_type="qcow2",
        driver_iothread=IOTHREAD,
        source_pool=plan.volume.pool,
        source_volume=plan.volume.name,
        target_dev="vda",
        target_bus="virtio",
        iotune=iotune,
    )
    disks: tuple[Disk, ...] = (disk,)
    if plan.seed is not None:
        # The NoCloud seed as a CD-ROM; IDE because the `pc` machine has it built in.
        disks += (
            Disk(
                type="volume",
                device="cdrom",
                driver_name="qemu",
                driver_type="raw",
                source_pool=plan.seed.pool,
                source_volume=plan.seed.volume,
                target_dev="hdc",
                target_bus="ide",
                readonly=True,
            ),
        )
    interfaces = tuple(
        Interface(
            type="bridge",
            mac=nic.mac,
            source_bridge=nic.bridge,
            target_dev=nic.tap,
            model="virtio",
            port_isolated=True if nic.port_isolated else None,
        )
        for nic in plan.nics
    )
    graphics: tuple[Graphics, ...] = ()
    videos: tuple[Video, ...] = ()
    if vm.display is not None:
        graphics = (Graphics(type="vnc", autoport=True, listen="127.0.0.1"),)
        videos = (Video(model="vga", xres=vm.display.width, yres=vm.display.height),)
    watchdog = Watchdog(model=vm.watchdog.model, action=vm.watchdog.action) if vm.watchdog else None
    # A balloon could hand a safety VM's reserved memory back to the host.
    reserved = plan.placement.dedicated or bool(vm.memory.hugepages)
    channels = plan.channels
    serial_ports = tuple(
        Channel(type="unix", source_mode="bind", source_path=s.socket, target_name=s.port)
        for s in channels.serials
    )
    balloon = MemBalloon(model="none") if reserved else MemBalloon(model="virtio", stats_period=5)
    return Devices(
        disks=disks,
        interfaces=interfaces,
        serials=(Serial(type="pty", log_file=plan.serial_log, log_append=False, target_port=0),),
        consoles=(Console(type="pty", target_type="serial", target_port=0),),
        channels=(Channel(type="unix", source_mode="bind"),) + serial_ports,
        graphics=graphics,
        videos=videos,
        watchdog=watchdog,
        memballoon=balloon,
        rngs=(RNG(model="virtio"),),
        panics=(Panic(model="isa"),),
        # No role: QEMU then blocks migration and memory snapshots of a member,
        # which would tear the region apart (docs/channels.md).
        shmems=tuple(Shmem(name=r.name, size_mib=r.size // MIB) for r in channels.regions),
        vsock=Vsock(cid_auto=False, cid_address=channels.vsocks[0].cid)
        if channels.vsocks
        else None,
    )
