"""A running QEMU's threads as the kernel sees them: which is a vCPU, which an
I/O thread, where each may run, how it is scheduled, and which cgroups hold it.

Read from /proc and psutil, never from libvirt, so status and audit report
what is really in force rather than what was asked for.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import psutil

_VCPU = re.compile(r"^CPU (\d+)/(KVM|TCG|HVF|WHPX)$")
_IOTHREAD = re.compile(r"^IO (.+)$")
SCHED_NAMES = {
    os.SCHED_OTHER: "other",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
    os.SCHED_BATCH: "batch",
    os.SCHED_IDLE: "idle",
}


@dataclass(frozen=True)
class QemuThread:
    tid: int
    name: str
    kind: str  # vcpu | iothread | emulator
    index: int | None  # vCPU number, for vCPU threads
    affinity: frozenset[int]
    policy: str
    priority: int
    last_cpu: int | None
    cpu_seconds: float


@dataclass(frozen=True)
class QemuProcess:
    pid: int
    started: float
    hugetlb_kib: int
    rss_kib: int
    threads: tuple[QemuThread, ...]

    @property
    def vcpus(self) -> list[QemuThread]:
        return sorted((t for t in self.threads if t.kind == "vcpu"), key=lambda t: t.index or 0)

    @property
    def emulator(self) -> list[QemuThread]:
        return [t for t in self.threads if t.kind == "emulator"]


def qemu_pid(domain: str, run_dir: str = "/run/libvirt/qemu") -> int | None:
    """The QEMU pid libvirt recorded for a running domain on this host."""
    try:
        pid = int(Path(run_dir, f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None


def classify(name: str) -> tuple[str, int | None]:
    match = _VCPU.match(name)
    if match:
        return "vcpu", int(match.group(1))
    if _IOTHREAD.match(name):
        return "iothread", None
    return "emulator", None


def inspect(pid: int) -> QemuProcess:
    proc = psutil.Process(pid)
    threads = []
    for t in proc.threads():
        task = Path(f"/proc/{pid}/task/{t.id}")
        try:
            name = (task / "comm").read_text().strip()
            affinity = frozenset(os.sched_getaffinity(t.id))
            policy = os.sched_getscheduler(t.id)
            priority = os.sched_getparam(t.id).sched_priority
            last_cpu = int((task / "stat").read_text().rsplit(")", 1)[1].split()[36])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended while we looked
        kind, index = classify(name)
        threads.append(
            QemuThread(
                tid=t.id,
                name=name,
                kind=kind,
                index=index,
                affinity=affinity,
                policy=SCHED_NAMES.get(policy, str(policy)),
                priority=priority,
                last_cpu=last_cpu,
                cpu_seconds=t.user_time + t.system_time,
            )
        )
    status = _status_fields(pid)
    return QemuProcess(
        pid=pid,
        started=proc.create_time(),
        hugetlb_kib=status.get("HugetlbPages", 0),
        rss_kib=status.get("VmRSS", 0),
        threads=tuple(threads),
    )


def _status_fields(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def cgroup_dir(tid: int, controller: str, pid: int | None = None) -> Path | None:
    """The cgroup v1 directory of `controller` holding a thread."""
    owner = f"/proc/{pid}/task/{tid}" if pid else f"/proc/{tid}"
    try:
        lines = Path(owner, "cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            mount = Path("/sys/fs/cgroup") / controllers
            return mount / path.lstrip("/")
    return None
