"""Each block writes what libvirt's formatdomain documentation shows, reads
libvirt's variants (units, spellings), and refuses what libvirt would."""

from __future__ import annotations

import pytest
from lxml import etree

from kvmctl.xml import (
    CPU,
    OS,
    RNG,
    Bandwidth,
    BandwidthRate,
    Channel,
    CPUTune,
    Devices,
    Disk,
    Domain,
    EmulatorSched,
    Graphics,
    HugePage,
    Input,
    Interface,
    IOThreadPin,
    IOTune,
    MemBalloon,
    MemoryBacking,
    MemTune,
    NumaTune,
    Panic,
    Serial,
    StorageVolume,
    VCPUPin,
    VCPUSched,
    Video,
    Watchdog,
    XMLModel,
)
from kvmctl.xml.memory import MemNode

pytestmark = pytest.mark.unit


def _c14n(xml: str) -> bytes:
    """Canonical form, so quoting style and indentation do not matter."""
    parser = etree.XMLParser(remove_blank_text=True)
    canonical: bytes = etree.tostring(etree.fromstring(xml.encode(), parser), method="c14n")
    return canonical


def assert_xml(model: XMLModel, expected: str) -> None:
    assert _c14n(model.to_xml()) == _c14n(expected)
    assert type(model).from_xml(expected) == model


def test_cputune_block_as_documented() -> None:
    tune = CPUTune(
        shares=2048,
        vcpupins=(VCPUPin(vcpu=0, cpuset="1-4,^2"),),
        emulatorpin="0",
        iothreadpins=(IOThreadPin(iothread=1, cpuset="0"),),
        vcpuscheds=(VCPUSched(vcpus="0", scheduler="fifo", priority=10),),
    )
    assert_xml(
        tune,
        """<cputune><shares>2048</shares><vcpupin vcpu='0' cpuset='1-4,^2'/>
        <emulatorpin cpuset='0'/><iothreadpin iothread='1' cpuset='0'/>
        <vcpusched vcpus='0' scheduler='fifo' priority='10'/></cputune>""",
    )


def test_limit_as_cfs_quota() -> None:
    # A 50 % cap is a quota of half the period, in microseconds.
    assert_xml(
        CPUTune(period=100000, quota=50000, emulator_period=100000, emulator_quota=-1),
        """<cputune><period>100000</period><quota>50000</quota>
        <emulator_period>100000</emulator_period><emulator_quota>-1</emulator_quota></cputune>""",
    )


def test_hugepages_block_as_documented() -> None:
    assert_xml(
        MemoryBacking(hugepages=(HugePage(size_kib=2048),)),
        "<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>",
    )


def test_bare_hugepages_element_means_default_page_size() -> None:
    assert_xml(MemoryBacking(hugepages=()), "<memoryBacking><hugepages/></memoryBacking>")
    assert_xml(MemoryBacking(locked=True), "<memoryBacking><locked/></memoryBacking>")


def test_sizes_in_other_units_are_read_as_kib() -> None:
    backing = MemoryBacking.from_xml(
        "<memoryBacking><hugepages><page size='1' unit='G' nodeset='0-1'/>"
        "<page size='2' unit='MiB'/></hugepages></memoryBacking>"
    )
    assert backing.hugepages == (
        HugePage(size_kib=1048576, nodeset="0-1"),
        HugePage(size_kib=2048),
    )
    domain = Domain.from_xml(
        "<domain type='kvm'><name>a</name><memory unit='GiB'>1</memory>"
        "<currentMemory>524288</currentMemory><vcpu>1</vcpu></domain>"
    )
    assert (domain.memory_kib, domain.current_memory_kib) == (1048576, 524288)


def test_size_that_is_no_whole_kib_is_refused() -> None:
    with pytest.raises(ValueError, match="whole number of KiB"):
        MemTune.from_xml("<memtune><hard_limit unit='b'>1000</hard_limit></memtune>")
    with pytest.raises(ValueError, match="unknown size unit"):
        MemTune.from_xml("<memtune><hard_limit unit='parsec'>1</hard_limit></memtune>")


def test_volume_sizes_are_bytes() -> None:
    vol = StorageVolume.from_xml(
        "<volume><name>v.qcow2</name><capacity unit='G'>1</capacity>"
        "<target><format type='qcow2'/></target></volume>"
    )
    assert vol.capacity_bytes == 1 << 30
    assert '<capacity unit="bytes">1073741824</capacity>' in vol.to_xml()


def test_memtune_and_numatune() -> None:
    assert_xml(
        MemTune(hard_limit_kib=1048576, soft_limit_kib=524288),
        """<memtune><hard_limit unit='KiB'>1048576</hard_limit>
        <soft_limit unit='KiB'>524288</soft_limit></memtune>""",
    )
    assert_xml(
        NumaTune(
            mode="strict",
            nodeset="1-4,^3",
            memnodes=(MemNode(cellid=0, mode="preferred", nodeset="1"),),
        ),
        """<numatune><memory mode='strict' nodeset='1-4,^3'/>
        <memnode cellid='0' mode='preferred' nodeset='1'/></numatune>""",
    )


@pytest.mark.parametrize(
    ("scheduler", "priority", "message"),
    [
        ("fifo", None, "needs a priority"),
        ("rr", 0, "needs a priority"),
        ("fifo", 100, "needs a priority"),
        ("batch", 5, "takes no priority"),
    ],
)
def test_scheduler_priority_rules(scheduler: str, priority: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VCPUSched(vcpus="0", scheduler=scheduler, priority=priority)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        EmulatorSched(scheduler=scheduler, priority=priority)  # type: ignore[arg-type]


def test_unknown_scheduler_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'deadline' is not one of 'fifo', 'rr'"):
        VCPUSched(vcpus="0", scheduler="deadline", priority=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scheduler"):
        CPUTune.from_xml("<cputune><vcpusched vcpus='0' scheduler='deadline'/></cputune>")


@pytest.mark.parametrize("cpuset", ["", "a", "1-", "0,,1", "^", "0 1"])
def test_bad_cpusets_are_refused(cpuset: str) -> None:
    with pytest.raises(ValueError, match="cpuset"):
        VCPUPin(vcpu=0, cpuset=cpuset)


def test_pins_outside_the_domain_are_refused() -> None:
    with pytest.raises(ValueError, match="vCPU 2"):
        Domain(
            type="qemu",
            name="a",
            memory_kib=1024,
            vcpus=2,
            cputune=CPUTune(vcpupins=(VCPUPin(vcpu=2, cpuset="0"),)),
        )
    with pytest.raises(ValueError, match="I/O thread 1"):
        Domain(
            type="qemu",
            name="a",
            memory_kib=1024,
            vcpus=1,
            cputune=CPUTune(iothreadpins=(IOThreadPin(iothread=1, cpuset="0"),)),
        )


def test_memnode_needs_a_guest_numa_cell() -> None:
    with pytest.raises(ValueError, match="NUMA cell 0"):
        Domain(
            type="qemu",
            name="a",
            memory_kib=1024,
            vcpus=1,
            numatune=NumaTune(memnodes=(MemNode(cellid=0, mode="strict", nodeset="0"),)),
        )


def test_current_memory_cannot_exceed_memory() -> None:
    with pytest.raises(ValueError, match="currentMemory"):
        Domain(type="qemu", name="a", memory_kib=1024, current_memory_kib=2048, vcpus=1)


def test_disk_with_iotune_as_documented() -> None:
    disk = Disk(
        driver_name="qemu",
        driver_type="qcow2",
        driver_cache="none",
        driver_io="native",
        source_file="/var/lib/kvmctl/a.qcow2",
        target_dev="vda",
        target_bus="virtio",
        iotune=IOTune(total_iops_sec=2000, total_iops_sec_max=4000, total_iops_sec_max_length=10),
    )
    assert_xml(
        disk,
        """<disk type='file' device='disk'>
        <driver name='qemu' type='qcow2' cache='none' io='native'/>
        <source file='/var/lib/kvmctl/a.qcow2'/><target dev='vda' bus='virtio'/>
        <iotune><total_iops_sec>2000</total_iops_sec><total_iops_sec_max>4000</total_iops_sec_max>
        <total_iops_sec_max_length>10</total_iops_sec_max_length></iotune></disk>""",
    )


def test_volume_disk() -> None:
    assert_xml(
        Disk(type="volume", source_pool="kvmctl", source_volume="a.qcow2", target_dev="vda"),
        "<disk type='volume' device='disk'><source pool='kvmctl' volume='a.qcow2'/>"
        "<target dev='vda'/></disk>",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "file", "source_dev": "/dev/sda"}, "but a block source"),
        ({"type": "volume", "source_pool": "p"}, "pool and volume"),
        ({"type": "file"}, "needs a source"),
    ],
)
def test_disk_source_must_match_type(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Disk(target_dev="vda", **kwargs)  # type: ignore[arg-type]


def test_iotune_total_excludes_read_write() -> None:
    with pytest.raises(ValueError, match="total_iops_sec excludes"):
        IOTune(total_iops_sec=1, read_iops_sec=1)


def test_duplicate_disk_targets_are_refused() -> None:
    disk = Disk(source_file="/a", target_dev="vda")
    with pytest.raises(ValueError, match="'vda' is used twice"):
        Devices(disks=(disk, disk))


def test_interface_with_bandwidth_as_documented() -> None:
    nic = Interface(
        type="bridge",
        mac="52:54:00:00:00:01",
        source_bridge="kvbr-media",
        bandwidth=Bandwidth(
            inbound=BandwidthRate(average=1000, peak=5000, burst=1024),
            outbound=BandwidthRate(average=128, peak=256, burst=256),
        ),
        port_isolated=True,
        model="virtio",
    )
    assert_xml(
        nic,
        """<interface type='bridge'><mac address='52:54:00:00:00:01'/>
        <source bridge='kvbr-media'/><bandwidth>
        <inbound average='1000' peak='5000' burst='1024'/>
        <outbound average='128' peak='256' burst='256'/></bandwidth>
        <port isolated='yes'/><model type='virtio'/></interface>""",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"type": "bridge"}, "needs source_bridge"),
        ({"type": "network", "source_bridge": "br0"}, "needs source_network"),
        ({"type": "bridge", "source_bridge": "br0", "mac": "52:54:00:AA:00:01"}, "MAC"),
        ({"type": "bridge", "source_bridge": "a-bridge-name-too-long"}, "interface name"),
        ({"type": "bridge", "source_bridge": "br0", "target_dev": "tap 0"}, "interface name"),
    ],
)
def test_interface_rules(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Interface(**kwargs)  # type: ignore[arg-type]


def test_bandwidth_rules() -> None:
    with pytest.raises(ValueError, match="needs an average"):
        BandwidthRate(peak=10)
    with pytest.raises(ValueError, match="inbound traffic only"):
        Bandwidth(outbound=BandwidthRate(average=1, floor=1))


def test_small_devices_as_documented() -> None:
    assert_xml(
        Watchdog(model="i6300esb", action="reset"), "<watchdog model='i6300esb' action='reset'/>"
    )
    assert_xml(
        Watchdog(model="itco", action="inject-nmi"), "<watchdog model='itco' action='inject-nmi'/>"
    )
    assert_xml(Panic(model="pvpanic"), "<panic model='pvpanic'/>")
    assert_xml(
        MemBalloon(stats_period=10),
        "<memballoon model='virtio'><stats period='10'/></memballoon>",
    )
    assert_xml(
        RNG(backend_path="/dev/urandom"),
        "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>",
    )
    assert_xml(
        Channel(),
        "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
    )
    assert_xml(
        Serial(log_file="/var/log/a.log", log_append=True, target_port=0),
        "<serial type='pty'><log file='/var/log/a.log' append='on'/><target port='0'/></serial>",
    )
    assert_xml(
        Video(model="virtio", heads=1, xres=1280, yres=480),
        "<video><model type='virtio' heads='1'><resolution x='1280' y='480'/></model></video>",
    )
    assert_xml(Input(type="tablet", bus="usb"), "<input type='tablet' bus='usb'/>")


def test_small_device_rules() -> None:
    with pytest.raises(ValueError, match="takes no options"):
        MemBalloon(model="none", stats_period=5)
    with pytest.raises(ValueError, match="builtin backend"):
        RNG(backend_model="builtin", backend_path="/dev/random")
    with pytest.raises(ValueError, match="xres and yres"):
        Video(xres=1)
    with pytest.raises(ValueError, match="exclude each other"):
        Graphics(listen="127.0.0.1", socket="/run/a.sock")
    with pytest.raises(ValueError, match="needs source_path"):
        Serial(type="file")
    with pytest.raises(ValueError, match="needs log_file"):
        Serial(log_append=True)
    with pytest.raises(ValueError, match="USB controller"):
        from kvmctl.xml import Controller

        Devices(
            controllers=(Controller(type="usb", model="none"),),
            inputs=(Input(type="tablet", bus="usb"),),
        )


def test_graphics_reads_libvirts_expanded_form() -> None:
    # libvirt writes a <listen> child next to the attribute; the attribute suffices.
    gfx = Graphics.from_xml(
        "<graphics type='vnc' port='5901' autoport='no' listen='127.0.0.1'>"
        "<listen type='address' address='127.0.0.1'/></graphics>"
    )
    assert gfx == Graphics(port=5901, autoport=False, listen="127.0.0.1")


def test_os_and_cpu_rules() -> None:
    assert_xml(
        OS(machine="q35", kernel="/k", cmdline="console=ttyS0", boot_devices=("hd",)),
        """<os><type arch='x86_64' machine='q35'>hvm</type><kernel>/k</kernel>
        <cmdline>console=ttyS0</cmdline><boot dev='hd'/></os>""",
    )
    with pytest.raises(ValueError, match="need a kernel"):
        OS(cmdline="quiet")
    with pytest.raises(ValueError, match="migratable"):
        CPU(mode="custom", model="qemu64", migratable=True)
    with pytest.raises(ValueError, match="topology"):
        CPU(mode="host-passthrough", sockets=1)
    assert_xml(
        CPU(mode="host-passthrough", check="none", migratable=False),
        "<cpu mode='host-passthrough' check='none' migratable='off'/>",
    )
