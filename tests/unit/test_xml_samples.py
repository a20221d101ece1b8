"""Sample models used across the XML tests, and their golden round trips.

``SAMPLES`` is the fixture set the checkprops test inspects: between them,
these objects set every declared field of every model at least once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmctl.xml import (
    CPU,
    OS,
    RNG,
    BackingStore,
    Bandwidth,
    BandwidthRate,
    Channel,
    Clock,
    Console,
    Controller,
    CPUFeature,
    CPUTune,
    Devices,
    Disk,
    Domain,
    EmulatorSched,
    Features,
    Graphics,
    HugePage,
    Input,
    Interface,
    IOThreadPin,
    IOThreadSched,
    IOTune,
    KvmctlMetadata,
    MemBalloon,
    MemNode,
    MemoryBacking,
    MemTune,
    Metadata,
    NumaCell,
    NumaTune,
    Panic,
    Serial,
    Shmem,
    StoragePool,
    StorageVolume,
    Timer,
    VCPUPin,
    VCPUSched,
    Video,
    Vsock,
    Watchdog,
    XMLModel,
)
from tests.golden import assert_golden

pytestmark = pytest.mark.unit

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "data" / "xml"
UUID = "6f1c2a8e-64c5-4f3a-9b8e-3d5a2f0f7c11"


def cluster_domain() -> Domain:
    """What a safety-critical cockpit VM looks like under TCG: direct kernel
    boot, hugepages, one dedicated pCPU, FIFO vCPU, emulator on housekeeping."""
    return Domain(
        type="qemu",
        name="demo-cockpit-cluster",
        uuid="0b6f6c1e-3d0e-4d61-9d3c-6c7f0d0c5a01",
        metadata=Metadata(
            kvmctl=KvmctlMetadata(
                set_name="demo-cockpit",
                vm_name="cluster",
                spec_hash="sha256:0f3c",
                role="instrument-cluster",
                criticality="safety",
            )
        ),
        memory_kib=262144,
        current_memory_kib=262144,
        memory_backing=MemoryBacking(hugepages=(HugePage(size_kib=2048),), nosharepages=True),
        vcpus=1,
        vcpu_placement="static",
        cputune=CPUTune(
            vcpupins=(VCPUPin(vcpu=0, cpuset="1"),),
            emulatorpin="0",
            vcpuscheds=(VCPUSched(vcpus="0", scheduler="fifo", priority=10),),
        ),
        os=OS(
            machine="pc",
            kernel="/var/lib/kvmctl/images/vmlinuz",
            initrd="/var/lib/kvmctl/images/initrd-rt.img",
            cmdline="console=ttyS0 panic=-1",
            boot_devices=("hd",),
        ),
        features=Features(acpi=True, apic=True),
        cpu=CPU(mode="custom", match="exact", check="none", model="qemu64", model_fallback="allow"),
        clock=Clock(offset="utc"),
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="destroy",
        devices=Devices(
            emulator="/usr/bin/qemu-system-x86_64",
            disks=(
                Disk(
                    driver_name="qemu",
                    driver_type="qcow2",
                    source_file="/var/lib/kvmctl/pool/demo-cockpit-cluster.qcow2",
                    target_dev="vda",
                    target_bus="virtio",
                    iotune=IOTune(total_iops_sec=2000),
                ),
            ),
            controllers=(
                Controller(type="usb", index=0, model="none"),
                Controller(type="virtio-serial", index=0),
            ),
            interfaces=(
                Interface(
                    type="bridge",
                    mac="52:54:00:4b:1a:01",
                    source_bridge="kvbr-vehicle",
                    target_dev="kvt-cluster0",
                    model="virtio",
                ),
            ),
            serials=(
                Serial(log_file="/var/log/kvmctl/cluster.log", log_append=False, target_port=0),
            ),
            consoles=(Console(target_type="serial", target_port=0),),
            channels=(Channel(),),
            graphics=(Graphics(port=-1, autoport=True, listen="127.0.0.1"),),
            videos=(Video(model="vga", vram=16384, heads=1, primary=True),),
            watchdog=Watchdog(model="i6300esb", action="reset"),
            memballoon=MemBalloon(model="none"),
        ),
    )


def full_domain() -> Domain:
    """Every domain-level property at once. Written the way libvirt writes it
    back (one vcpusched per vCPU, explicit controllers, MACs and tap names),
    so defining it and reading it back gives the same object."""
    return Domain(
        type="kvm",
        name="full",
        uuid=UUID,
        title="Instrument cluster",
        description="every property",
        metadata=Metadata(
            kvmctl=KvmctlMetadata(
                set_name="demo",
                vm_name="full",
                spec_hash="sha256:ab",
                role="instrument-cluster",
                criticality="high",
                restart_hash="sha256:01",
                live_hash="sha256:02",
                groups="cpu=1a,memory=2b",
                dedicated="1",
                vsock_cid=1234,
            ),
            foreign=('<app:x xmlns:app="http://example.org/app" a="1"><app:y>z</app:y></app:x>',),
        ),
        memory_kib=524288,
        current_memory_kib=262144,
        memtune=MemTune(
            hard_limit_kib=1048576,
            soft_limit_kib=524288,
            min_guarantee_kib=1024,
            swap_hard_limit_kib=2097152,
        ),
        memory_backing=MemoryBacking(
            hugepages=(HugePage(size_kib=2048, nodeset="0"),),
            nosharepages=True,
            locked=True,
            source_type="memfd",
            access_mode="private",
            allocation_mode="immediate",
            allocation_threads=2,
            discard=True,
        ),
        vcpus=2,
        vcpu_placement="static",
        vcpu_cpuset="0-1",
        iothreads=1,
        cputune=CPUTune(
            shares=2048,
            period=100000,
            quota=50000,
            global_period=100000,
            global_quota=80000,
            emulator_period=100000,
            emulator_quota=20000,
            iothread_period=100000,
            iothread_quota=20000,
            vcpupins=(VCPUPin(vcpu=0, cpuset="1"), VCPUPin(vcpu=1, cpuset="1")),
            emulatorpin="0",
            iothreadpins=(IOThreadPin(iothread=1, cpuset="0"),),
            emulatorsched=EmulatorSched(scheduler="rr", priority=5),
            vcpuscheds=(
                VCPUSched(vcpus="0", scheduler="fifo", priority=10),
                VCPUSched(vcpus="1", scheduler="fifo", priority=10),
            ),
            iothreadscheds=(IOThreadSched(iothreads="1", scheduler="rr", priority=1),),
        ),
        numatune=NumaTune(
            mode="strict",
            nodeset="0",
            memnodes=(MemNode(cellid=0, mode="strict", nodeset="0"),),
        ),
        os=OS(
            machine="q35",
            kernel="/var/lib/kvmctl/vmlinuz",
            initrd="/var/lib/kvmctl/initrd",
            cmdline="console=ttyS0 quiet",
            boot_devices=("hd", "cdrom"),
        ),
        features=Features(acpi=True, apic=True, pae=True),
        cpu=CPU(
            mode="custom",
            match="exact",
            check="none",
            model="qemu64",
            model_fallback="forbid",
            sockets=1,
            dies=1,
            cores=2,
            threads=1,
            features=(CPUFeature(policy="require", name="x2apic"),),
            numa_cells=(NumaCell(id=0, cpus="0-1", memory_kib=524288),),
        ),
        clock=Clock(
            offset="utc",
            timers=(Timer(name="rtc", tickpolicy="catchup"), Timer(name="hpet", present=False)),
        ),
        on_poweroff="destroy",
        on_reboot="restart",
        on_crash="coredump-destroy",
        devices=full_devices(),
    )


def full_devices() -> Devices:
    return Devices(
        emulator="/usr/bin/qemu-system-x86_64",
        disks=(
            Disk(
                type="file",
                device="disk",
                driver_name="qemu",
                driver_type="qcow2",
                driver_cache="none",
                driver_io="native",
                driver_discard="unmap",
                driver_iothread=1,
                source_file="/var/lib/libvirt/images/full.qcow2",
                target_dev="vda",
                target_bus="virtio",
                iotune=IOTune(
                    total_bytes_sec=10485760,
                    total_iops_sec=2000,
                    total_bytes_sec_max=20971520,
                    total_iops_sec_max=4000,
                    size_iops_sec=4096,
                    group_name="cockpit",
                    total_bytes_sec_max_length=5,
                    total_iops_sec_max_length=10,
                ),
                serial="kvmctl-full",
            ),
            Disk(
                type="volume",
                driver_name="qemu",
                driver_type="raw",
                source_pool="default",
                source_volume="data.img",
                target_dev="vdb",
                target_bus="virtio",
                iotune=IOTune(
                    read_bytes_sec=1000,
                    write_bytes_sec=2000,
                    read_iops_sec=3,
                    write_iops_sec=4,
                    read_bytes_sec_max=5000,
                    write_bytes_sec_max=6000,
                    read_iops_sec_max=7,
                    write_iops_sec_max=8,
                    read_bytes_sec_max_length=9,
                    write_bytes_sec_max_length=10,
                    read_iops_sec_max_length=11,
                    write_iops_sec_max_length=12,
                ),
                readonly=True,
            ),
            Disk(type="block", source_dev="/dev/sdz", target_dev="vdc", target_bus="virtio"),
            Disk(device="cdrom", target_dev="sda", target_bus="sata", readonly=True),
        ),
        controllers=(
            Controller(type="usb", index=0, model="none"),
            Controller(type="sata", index=0),
            Controller(type="pci", index=0, model="pcie-root"),
            Controller(type="virtio-serial", index=0),
        ),
        interfaces=(
            Interface(
                type="bridge",
                mac="52:54:00:12:34:56",
                source_bridge="kvbr-vehicle",
                bandwidth=Bandwidth(
                    inbound=BandwidthRate(average=1000, peak=5000, burst=1024),
                    outbound=BandwidthRate(average=128, peak=256, burst=256),
                ),
                port_isolated=True,
                target_dev="kvt-full0",
                model="virtio",
                mtu=1500,
                alias="ua-net0",
            ),
            Interface(
                type="network",
                mac="52:54:00:12:34:57",
                source_network="default",
                bandwidth=Bandwidth(inbound=BandwidthRate(average=1000, floor=200)),
                target_dev="kvt-full1",
                model="e1000e",
            ),
        ),
        serials=(
            Serial(type="pty", log_file="/var/log/kvmctl/full.log", log_append=True, target_port=0),
            Serial(type="file", source_path="/var/log/kvmctl/full-1.log", target_port=1),
        ),
        consoles=(
            Console(type="pty", target_type="serial", target_port=0),
            Console(
                type="file",
                source_path="/var/log/kvmctl/full-hvc.log",
                target_type="virtio",
                target_port=1,
            ),
        ),
        channels=(
            Channel(source_mode="bind", source_path="/run/kvmctl/full.agent"),
            Channel(type="pty", target_name="org.kvmctl.ready.0"),
        ),
        inputs=(Input(type="tablet", bus="virtio"), Input(type="keyboard", bus="ps2")),
        graphics=(
            Graphics(type="vnc", port=-1, autoport=True, listen="127.0.0.1"),
            Graphics(type="vnc", socket="/run/kvmctl/full.vnc"),
        ),
        videos=(Video(model="virtio", heads=1, primary=True, xres=1280, yres=480),),
        watchdog=Watchdog(model="i6300esb", action="poweroff"),
        memballoon=MemBalloon(model="virtio", autodeflate=True, stats_period=10),
        rngs=(
            RNG(model="virtio", rate_bytes=1024, rate_period=1000, backend_path="/dev/urandom"),
            RNG(backend_model="builtin"),
        ),
        panics=(Panic(model="isa"),),
        shmems=(
            Shmem(name="kvmctl.demo.vehicle-state", size_mib=4),
            Shmem(name="kvmctl.demo.media-meta", role="peer", model="ivshmem-plain", size_mib=1),
        ),
        vsock=Vsock(model="virtio", cid_auto=False, cid_address=3),
    )


def passthrough_domain() -> Domain:
    """A VM for hosts where KVM works: host CPU, firmware boot from disk."""
    return Domain(
        type="kvm",
        name="ivi",
        memory_kib=1048576,
        vcpus=2,
        vcpu_placement="auto",
        numatune=NumaTune(mode="strict", placement="auto"),
        cpu=CPU(mode="host-passthrough", check="none", migratable=True),
        os=OS(machine="q35", boot_devices=("hd",)),
        devices=Devices(
            disks=(
                Disk(
                    driver_name="qemu",
                    driver_type="qcow2",
                    source_file="/var/lib/kvmctl/pool/ivi.qcow2",
                    target_dev="vda",
                    target_bus="virtio",
                ),
            ),
            rngs=(RNG(),),
        ),
    )


def minimal_domain() -> Domain:
    return Domain(type="qemu", name="minimal", memory_kib=131072, vcpus=1)


def overlay_volume() -> StorageVolume:
    return StorageVolume(
        type="file",
        name="demo-cockpit-cluster.qcow2",
        capacity_bytes=1073741824,
        allocation_bytes=0,
        path="/var/lib/kvmctl/pool/demo-cockpit-cluster.qcow2",
        format="qcow2",
        backing_store=BackingStore(path="/var/lib/kvmctl/images/test-guest.qcow2", format="qcow2"),
    )


def pool() -> StoragePool:
    return StoragePool(name="kvmctl", uuid=UUID, target_path="/var/lib/kvmctl/pool")


SAMPLES: dict[str, XMLModel] = {
    "domain-cluster": cluster_domain(),
    "domain-full": full_domain(),
    "domain-minimal": minimal_domain(),
    "domain-passthrough": passthrough_domain(),
    "volume-overlay": overlay_volume(),
    "pool-dir": pool(),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_round_trip_gives_equal_object(name: str) -> None:
    sample = SAMPLES[name]
    assert type(sample).from_xml(sample.to_xml()) == sample


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_output_is_deterministic(name: str) -> None:
    # Two independent builds must serialise byte for byte the same.
    rebuilt = {
        "domain-cluster": cluster_domain,
        "domain-full": full_domain,
        "domain-minimal": minimal_domain,
        "domain-passthrough": passthrough_domain,
        "volume-overlay": overlay_volume,
        "pool-dir": pool,
    }[name]()
    assert rebuilt.to_xml() == SAMPLES[name].to_xml()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_file(name: str, regenerate: bool) -> None:
    sample = SAMPLES[name]
    path = GOLDEN_DIR / f"{name}.xml"
    assert_golden(path, sample.to_xml(), regenerate)
    # The pinned file must also parse back into the very same object.
    assert type(sample).from_xml(path.read_text(encoding="utf-8")) == sample
