"""The /proc and sysfs readers of kvmctl.host.kernelinfo, against fixture text and fake trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmctl.host import kernelinfo as ki
from kvmctl.host.facts import CpuInfo, HugepagePool

pytestmark = pytest.mark.unit


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- cpulists and CPUs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("", []),
        ("\n", []),
        ("0", [0]),
        ("0-3", [0, 1, 2, 3]),
        ("0-1,4,6-7\n", [0, 1, 4, 6, 7]),
        ("3,1,2", [1, 2, 3]),
        ("1-2,2-3", [1, 2, 3]),
    ],
)
def test_parse_cpulist(text: str, cpus: list[int]) -> None:
    assert ki.parse_cpulist(text) == cpus


def fake_cpus(root: Path) -> None:
    """Two sockets x two cores, NUMA node per socket, CPU 3 offline (no topology dir)."""
    base = "/sys/devices/system/cpu"
    write(root, f"{base}/present", "0-3\n")
    write(root, f"{base}/online", "0-2\n")
    write(root, f"{base}/isolated", "2-3\n")
    for cpu, (core, socket) in enumerate([(0, 0), (1, 0), (0, 1)]):
        write(root, f"{base}/cpu{cpu}/topology/core_id", f"{core}\n")
        write(root, f"{base}/cpu{cpu}/topology/physical_package_id", f"{socket}\n")
    (root / base.lstrip("/") / "cpu3").mkdir()
    write(root, "/sys/devices/system/node/node0/cpulist", "0-1\n")
    write(root, "/sys/devices/system/node/node1/cpulist", "2-3\n")


def test_read_cpus_topology_nodes_and_online(tmp_path: Path) -> None:
    fake_cpus(tmp_path)
    assert ki.read_cpus(tmp_path) == [
        CpuInfo(id=0, core=0, socket=0, node=0, online=True),
        CpuInfo(id=1, core=1, socket=0, node=0, online=True),
        CpuInfo(id=2, core=0, socket=1, node=1, online=True),
        CpuInfo(id=3, core=0, socket=0, node=1, online=False),
    ]
    assert ki.read_isolated(tmp_path) == [2, 3]


def test_read_cpus_without_present_file_lists_directories(tmp_path: Path) -> None:
    base = "/sys/devices/system/cpu"
    for cpu in (0, 1, 10):
        write(tmp_path, f"{base}/cpu{cpu}/topology/core_id", f"{cpu}\n")
    (tmp_path / base.lstrip("/") / "cpufreq").mkdir()
    cpus = ki.read_cpus(tmp_path)
    assert [c.id for c in cpus] == [0, 1, 10]
    assert all(c.online for c in cpus)  # no online file: all present CPUs count
    assert ki.read_isolated(tmp_path) == []  # no isolated file: none


def test_read_cpus_on_an_empty_tree(tmp_path: Path) -> None:
    assert ki.read_cpus(tmp_path) == []


# --- memory ----------------------------------------------------------------------------

MEMINFO = """\
MemTotal:       24683656 kB
MemFree:        21000000 kB
MemAvailable:   22956796 kB
HugePages_Total:     512
HugePages_Free:      500
Hugepagesize:       2048 kB
"""


def test_parse_meminfo() -> None:
    info = ki.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 24683656
    assert info["MemAvailable"] == 22956796
    assert info["HugePages_Free"] == 500
    assert ki.parse_meminfo("") == {}


def pool(root: Path, base: str, size: int, total: int, free: int) -> None:
    write(root, f"{base}/hugepages-{size}kB/nr_hugepages", f"{total}\n")
    write(root, f"{base}/hugepages-{size}kB/free_hugepages", f"{free}\n")


def test_hugepages_per_numa_node(tmp_path: Path) -> None:
    pool(tmp_path, "/sys/devices/system/node/node0/hugepages", 2048, 256, 200)
    pool(tmp_path, "/sys/devices/system/node/node0/hugepages", 1048576, 0, 0)
    pool(tmp_path, "/sys/devices/system/node/node1/hugepages", 2048, 256, 256)
    pool(tmp_path, "/sys/kernel/mm/hugepages", 2048, 512, 456)  # ignored: nodes known
    pools = ki.read_hugepages(tmp_path)
    assert pools == [
        HugepagePool(size_kib=1048576, node=0, total=0, free=0),
        HugepagePool(size_kib=2048, node=0, total=256, free=200),
        HugepagePool(size_kib=2048, node=1, total=256, free=256),
    ]


def test_hugepages_fall_back_to_system_wide_pools(tmp_path: Path) -> None:
    pool(tmp_path, "/sys/kernel/mm/hugepages", 2048, 512, 456)
    write(tmp_path, "/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "garbage")
    assert ki.read_hugepages(tmp_path) == [HugepagePool(size_kib=2048, total=512, free=456)]
    assert ki.read_hugepages(tmp_path / "nothing") == []


# --- mounts and cgroups ------------------------------------------------------------------

MOUNTS_V1 = """\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0
hugetlbfs /mnt/huge\\0401G hugetlbfs rw,relatime,pagesize=1024M 0 0
"""

MOUNTS_V2 = """\
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0
proc /proc proc rw 0 0
"""

MOUNTS_COMBINED_V1 = """\
cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,nodev,noexec,relatime,cpu,cpuacct 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,relatime,net_cls,net_prio 0 0
"""


def test_parse_mounts_decodes_octal_escapes() -> None:
    mounts = ki.parse_mounts(MOUNTS_V1 + "short line\n")
    assert len(mounts) == 10
    assert ki.hugetlbfs_mounts(mounts) == ["/dev/hugepages", "/mnt/huge 1G"]
    assert mounts[2] == ki.Mount(
        "cgroup", "/sys/fs/cgroup/cpu", "cgroup", ("rw", "relatime", "cpu")
    )


def test_cgroup_v1_hybrid_counts_as_v1(tmp_path: Path) -> None:
    info = ki.cgroup_info(ki.parse_mounts(MOUNTS_V1), tmp_path)
    assert info.version == 1
    assert info.controllers == ["cpu", "cpuacct", "cpuset", "memory"]  # not name=systemd
    assert info.cpu_mount == "/sys/fs/cgroup/cpu"


def test_cgroup_v1_combined_hierarchies() -> None:
    info = ki.cgroup_info(ki.parse_mounts(MOUNTS_COMBINED_V1))
    assert info.controllers == ["cpu", "cpuacct", "net_cls", "net_prio"]
    assert info.cpu_mount == "/sys/fs/cgroup/cpu,cpuacct"


def test_cgroup_v2_reads_controllers(tmp_path: Path) -> None:
    write(tmp_path, "/sys/fs/cgroup/cgroup.controllers", "cpuset cpu io memory hugetlb pids\n")
    info = ki.cgroup_info(ki.parse_mounts(MOUNTS_V2), tmp_path)
    assert info.version == 2
    assert info.controllers == ["cpu", "cpuset", "hugetlb", "io", "memory", "pids"]
    assert info.cpu_mount is None


def test_no_cgroups() -> None:
    assert ki.cgroup_info([]) == ki.CgroupInfo(None, [], None)


def test_rt_budget(tmp_path: Path) -> None:
    assert ki.read_rt_budget(tmp_path, None) == (False, None)
    assert ki.read_rt_budget(tmp_path, "/sys/fs/cgroup/cpu") == (False, None)
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.rt_runtime_us", "950000\n")
    assert ki.read_rt_budget(tmp_path, "/sys/fs/cgroup/cpu") == (True, 950000)
    write(tmp_path, "/sys/fs/cgroup/cpu/cpu.rt_runtime_us", "-1\n")
    assert ki.read_rt_budget(tmp_path, "/sys/fs/cgroup/cpu") == (True, -1)


# --- limits and capabilities ---------------------------------------------------------------

LIMITS = """\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max locked memory         8388608              8388608              bytes
Max address space         unlimited            unlimited            bytes
"""


def test_memlock_hard_limit() -> None:
    assert ki.parse_limits_memlock(LIMITS) == 8192
    unlimited = LIMITS.replace("8388608              8388608", "65536                unlimited")
    assert ki.parse_limits_memlock(unlimited) is None
    soft_only = LIMITS.replace("8388608              8388608", "65536                1048576")
    assert ki.parse_limits_memlock(soft_only) == 1024


STATUS = """\
Name:\tlibvirtd
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
"""


def test_cap_sys_resource_bit() -> None:
    mask = ki.parse_cap_eff(STATUS)
    assert mask == 0x1FFFEFFFFFF
    assert not ki.has_capability(mask, ki.CAP_SYS_RESOURCE)  # bit 24 cleared
    assert ki.has_capability(mask, 23) and ki.has_capability(mask, 25)
    full = ki.parse_cap_eff(
        STATUS.replace("CapEff:\t000001fffeffffff", "CapEff:\t000001ffffffffff")
    )
    assert ki.has_capability(full, ki.CAP_SYS_RESOURCE)
    assert ki.parse_cap_eff("Name: x\n") == 0


# --- channels ---------------------------------------------------------------------------------


def test_shm_free_space_and_kvmctl_regions(tmp_path: Path) -> None:
    write(tmp_path, "/dev/shm/kvmctl.demo.vehicle-state", "x" * 10)
    write(tmp_path, "/dev/shm/pulse-shm-1", "other")
    free, files = ki.read_shm(tmp_path)
    assert free is not None and free > 0
    assert files == {"kvmctl.demo.vehicle-state": 10}
    assert ki.read_shm(tmp_path / "none") == (None, {})


def test_vhost_vsock_device(tmp_path: Path) -> None:
    assert not ki.vhost_vsock(tmp_path)
    write(tmp_path, "/dev/vhost-vsock", "")
    assert ki.vhost_vsock(tmp_path)


# --- network ----------------------------------------------------------------------------------


def test_bridges(tmp_path: Path) -> None:
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "sys/class/net/kvbr-media/bridge").mkdir(parents=True)
    (tmp_path / "sys/class/net/virbr0/bridge").mkdir(parents=True)
    assert ki.read_bridges(tmp_path) == ["kvbr-media", "virbr0"]
    assert ki.read_bridges(tmp_path / "none") == []


def test_vlan_absent_on_a_kernel_without_8021q(tmp_path: Path) -> None:
    write(tmp_path, "/lib/modules/6.1.0/modules.builtin", "kernel/net/bridge/bridge.ko\n")
    assert not ki.vlan_supported(tmp_path, "6.1.0")


@pytest.mark.parametrize(
    "present",
    [
        "/proc/net/vlan/config",
        "/sys/module/8021q/refcnt",
        "/lib/modules/6.1.0/modules.builtin",
        "/lib/modules/6.1.0/kernel/net/8021q/8021q.ko.xz",
    ],
)
def test_vlan_present(tmp_path: Path, present: str) -> None:
    write(tmp_path, present, "kernel/net/8021q/8021q.ko\n")
    assert ki.vlan_supported(tmp_path, "6.1.0")


# --- daemons ---------------------------------------------------------------------------------


def test_daemons_by_pid_file_and_by_scan(tmp_path: Path) -> None:
    write(tmp_path, "/run/libvirtd.pid", "3180\n")
    write(tmp_path, "/proc/3180/comm", "libvirtd\n")
    write(tmp_path, "/proc/3177/comm", "virtlogd\n")  # no pid file: found by the scan
    write(tmp_path, "/proc/self/comm", "python\n")
    assert ki.daemon_pid("libvirtd", tmp_path) == 3180
    assert ki.daemon_pid("virtlogd", tmp_path) == 3177
    assert ki.daemons_running(tmp_path) == {"libvirtd": True, "virtlogd": True}


def test_stale_pid_file_is_not_a_running_daemon(tmp_path: Path) -> None:
    write(tmp_path, "/run/libvirtd.pid", "4242\n")
    write(tmp_path, "/proc/4242/comm", "bash\n")  # the PID was reused
    assert ki.daemon_pid("libvirtd", tmp_path) is None
    assert ki.daemons_running(tmp_path) == {"libvirtd": False, "virtlogd": False}


@pytest.mark.parametrize(("text", "allowed"), [("0\n", False), ("1\n", True), (None, None)])
def test_unprivileged_userfaultfd(tmp_path: Path, text: str | None, allowed: bool | None) -> None:
    if text is not None:
        knob = tmp_path / "proc/sys/vm/unprivileged_userfaultfd"
        knob.parent.mkdir(parents=True)
        knob.write_text(text)
    assert ki.userfaultfd_unprivileged(tmp_path) is allowed
