"""What the kernel says about this host, from /proc and /sys: CPUs, memory and
hugepages, mounts and cgroups, limits and capabilities, network, /dev/shm
and /dev/vhost-vsock, daemons.

Every reader is a pure function of text, or of a directory tree under a root
that tests replace with a fake one; `kvmctl.host.probe` wires them to the
real paths.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kvmctl.host.facts import CpuInfo, HugepagePool
from kvmctl.xml.names import SHMEM_PREFIX

CAP_SYS_RESOURCE = 24
V1_CONTROLLERS = {
    "blkio",
    "cpu",
    "cpuacct",
    "cpuset",
    "devices",
    "freezer",
    "hugetlb",
    "memory",
    "misc",
    "net_cls",
    "net_prio",
    "perf_event",
    "pids",
    "rdma",
}
DAEMONS = ("libvirtd", "virtlogd")


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text()
    except OSError:
        return default


def _under(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


# --- CPUs -------------------------------------------------------------------------


def parse_cpulist(text: str) -> list[int]:
    """The kernel's CPU list format: "0-3,8,10-11" (empty means none)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            first, last = part.split("-", 1)
            cpus.update(range(int(first), int(last) + 1))
        else:
            cpus.add(int(part))
    return sorted(cpus)


def read_cpus(root: Path = Path("/")) -> list[CpuInfo]:
    """Every present CPU with its core, socket, NUMA node and online state."""
    base = _under(root, "/sys/devices/system/cpu")
    present_text = _read(base / "present").strip()
    if present_text:
        ids = parse_cpulist(present_text)
    else:
        ids = sorted(int(p.name[3:]) for p in base.glob("cpu[0-9]*") if p.name[3:].isdigit())
    online_text = _read(base / "online").strip()
    online = set(parse_cpulist(online_text)) if online_text else set(ids)
    nodes: dict[int, int] = {}
    for node_dir in _under(root, "/sys/devices/system/node").glob("node[0-9]*"):
        node = int(node_dir.name[4:])
        for cpu in parse_cpulist(_read(node_dir / "cpulist")):
            nodes[cpu] = node
    cpus = []
    for cpu in ids:
        topo = base / f"cpu{cpu}" / "topology"
        core = _read(topo / "core_id").strip()
        socket_id = _read(topo / "physical_package_id").strip()
        cpus.append(
            CpuInfo(
                id=cpu,
                core=int(core) if core.lstrip("-").isdigit() else 0,
                socket=max(int(socket_id), 0) if socket_id.lstrip("-").isdigit() else 0,
                node=nodes.get(cpu, 0),
                online=cpu in online,
            )
        )
    return cpus


def read_isolated(root: Path = Path("/")) -> list[int]:
    return parse_cpulist(_read(_under(root, "/sys/devices/system/cpu/isolated")))


# --- memory -------------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: KiB} (HugePages_* counts are plain numbers)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"(\S+):\s+(\d+)", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def _pools_in(directory: Path, node: int | None) -> list[HugepagePool]:
    pools = []
    for pool in sorted(directory.glob("hugepages-*kB")):
        m = re.fullmatch(r"hugepages-(\d+)kB", pool.name)
        if not m:
            continue
        total = _read(pool / "nr_hugepages").strip()
        free = _read(pool / "free_hugepages").strip()
        if not (total.isdigit() and free.isdigit()):
            continue
        pools.append(
            HugepagePool(size_kib=int(m.group(1)), node=node, total=int(total), free=int(free))
        )
    return pools


def read_hugepages(root: Path = Path("/")) -> list[HugepagePool]:
    """Per NUMA node where the kernel reports it, else the system-wide pools."""
    per_node: list[HugepagePool] = []
    node_base = _under(root, "/sys/devices/system/node")
    nodes = sorted(
        (int(p.name[4:]), p) for p in node_base.glob("node[0-9]*") if p.name[4:].isdigit()
    )
    for node, path in nodes:
        per_node.extend(_pools_in(path / "hugepages", node))
    if per_node:
        return per_node
    return _pools_in(_under(root, "/sys/kernel/mm/hugepages"), None)


# --- mounts and cgroups -------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts (or /proc/self/mounts), octal escapes decoded."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(
            Mount(
                source=_unescape(parts[0]),
                target=_unescape(parts[1]),
                fstype=parts[2],
                options=tuple(parts[3].split(",")),
            )
        )
    return mounts


def hugetlbfs_mounts(mounts: Iterable[Mount]) -> list[str]:
    return [m.target for m in mounts if m.fstype == "hugetlbfs"]


@dataclass(frozen=True)
class CgroupInfo:
    version: Literal[1, 2] | None
    controllers: list[str]
    cpu_mount: str | None  # v1: where the cpu controller is mounted


def cgroup_info(mounts: Iterable[Mount], root: Path = Path("/")) -> CgroupInfo:
    """v2 when /sys/fs/cgroup itself is cgroup2; v1 (also "hybrid") when v1 hierarchies exist."""
    mounts = list(mounts)
    for m in mounts:
        if m.fstype == "cgroup2" and m.target == "/sys/fs/cgroup":
            text = _read(_under(root, "/sys/fs/cgroup/cgroup.controllers"))
            return CgroupInfo(2, sorted(text.split()), None)
    v1 = [m for m in mounts if m.fstype == "cgroup"]
    if not v1:
        return CgroupInfo(None, [], None)
    controllers: set[str] = set()
    cpu_mount = None
    for m in v1:
        found = V1_CONTROLLERS.intersection(m.options)
        controllers |= found
        if "cpu" in found and cpu_mount is None:
            cpu_mount = m.target
    return CgroupInfo(1, sorted(controllers), cpu_mount)


def read_rt_budget(root: Path, cpu_mount: str | None) -> tuple[bool, int | None]:
    """RT group scheduling exists when the v1 cpu controller has cpu.rt_runtime_us."""
    if cpu_mount is None:
        return False, None
    path = _under(root, cpu_mount) / "cpu.rt_runtime_us"
    if not path.exists():
        return False, None
    text = _read(path).strip()
    return True, int(text) if text.lstrip("-").isdigit() else None


# --- limits and capabilities -------------------------------------------------------


def parse_limits_memlock(text: str) -> int | None:
    """The hard "Max locked memory" from /proc/PID/limits, in KiB; None = unlimited."""
    for line in text.splitlines():
        if line.startswith("Max locked memory"):
            fields = line[len("Max locked memory") :].split()
            if len(fields) >= 2:
                hard = fields[1]
                return None if hard == "unlimited" else int(hard) // 1024
    return None


def parse_cap_eff(status_text: str) -> int:
    """The effective capability mask (CapEff) from /proc/PID/status."""
    m = re.search(r"^CapEff:\s*([0-9a-fA-F]+)", status_text, re.MULTILINE)
    return int(m.group(1), 16) if m else 0


def has_capability(mask: int, bit: int) -> bool:
    return bool(mask >> bit & 1)


# --- network ------------------------------------------------------------------------


def read_bridges(root: Path = Path("/")) -> list[str]:
    base = _under(root, "/sys/class/net")
    return (
        sorted(p.name for p in base.iterdir() if (p / "bridge").is_dir()) if base.is_dir() else []
    )


def vlan_supported(root: Path = Path("/"), release: str | None = None) -> bool:
    """802.1Q: loaded (/proc/net/vlan, /sys/module/8021q), built in, or a loadable module."""
    if _under(root, "/proc/net/vlan").exists() or _under(root, "/sys/module/8021q").exists():
        return True
    release = release or platform.release()
    moddir = _under(root, f"/lib/modules/{release}")
    if re.search(r"(^|/)8021q\.ko", _read(moddir / "modules.builtin"), re.MULTILINE):
        return True
    return any((moddir / "kernel/net/8021q").glob("8021q.ko*"))


def userfaultfd_unprivileged(root: Path = Path("/")) -> bool | None:
    text = _read(_under(root, "/proc/sys/vm/unprivileged_userfaultfd"), default="").strip()
    return None if not text.isdigit() else text != "0"


# --- channels ---------------------------------------------------------------------


def read_shm(root: Path = Path("/")) -> tuple[int | None, dict[str, int]]:
    """Bytes free in /dev/shm and kvmctl's region files there (name -> size)."""
    shm = _under(root, "/dev/shm")
    try:
        st = os.statvfs(shm)
        entries = list(shm.iterdir())
    except OSError:
        return None, {}
    files: dict[str, int] = {}
    for entry in entries:
        if entry.name.startswith(SHMEM_PREFIX):
            try:
                files[entry.name] = entry.stat().st_size
            except OSError:
                continue  # removed meanwhile
    return st.f_bavail * st.f_frsize, files


def vhost_vsock(root: Path = Path("/")) -> bool:
    return _under(root, "/dev/vhost-vsock").exists()


# --- daemons ------------------------------------------------------------------------


def _comm(root: Path, pid: int) -> str | None:
    text = _read(_under(root, f"/proc/{pid}/comm"), default="")
    return text.strip() or None


def daemon_pid(name: str, root: Path = Path("/")) -> int | None:
    """The PID of a running daemon: its pid file if that names a live process, else a scan."""
    pid_text = _read(_under(root, f"/run/{name}.pid")).strip()
    if pid_text.isdigit() and _comm(root, int(pid_text)) == name[:15]:
        return int(pid_text)
    proc = _under(root, "/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if entry.name.isdigit() and _comm(root, int(entry.name)) == name[:15]:
            return int(entry.name)
    return None


def daemons_running(root: Path = Path("/"), names: Iterable[str] = DAEMONS) -> dict[str, bool]:
    return {name: daemon_pid(name, root) is not None for name in names}
