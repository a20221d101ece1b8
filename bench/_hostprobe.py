"""Host-side figures for bench/interference.py, read from /proc and cgroup
files, never from libvirt: CPU time of a QEMU process and of its vCPU threads,
how long its threads waited for a CPU, CFS throttling of its vCPU cgroup, and
how busy each host CPU was."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from kvmctl.host import threads


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    process_s: float  # user + system CPU time of the whole QEMU process
    vcpu_s: float  # the same, vCPU threads only
    wait_s: dict[str, float] = field(default_factory=dict)  # run-queue wait per thread kind
    throttle: tuple[int, int] = (0, 0)  # (nr_periods, nr_throttled) of vCPU 0's cpu cgroup


def _wait_seconds(pid: int, tid: int) -> float:
    """Time the thread spent runnable but not running (schedstat, field 2)."""
    try:
        return int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _throttle(proc: threads.QemuProcess) -> tuple[int, int]:
    if not proc.vcpus:
        return (0, 0)
    cg = threads.cgroup_dir(proc.vcpus[0].tid, "cpu", proc.pid)
    if cg is None:
        return (0, 0)
    try:
        stat = dict(line.split() for line in (cg / "cpu.stat").read_text().splitlines())
    except (OSError, ValueError):
        return (0, 0)
    return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))


def sample(pid: int) -> Sample:
    proc = threads.inspect(pid)
    times = psutil.Process(pid).cpu_times()
    waits: dict[str, float] = {}
    for t in proc.threads:
        waits[t.kind] = waits.get(t.kind, 0.0) + _wait_seconds(pid, t.tid)
    return Sample(
        at=time.monotonic(),
        process_s=times.user + times.system,
        vcpu_s=sum(t.cpu_seconds for t in proc.vcpus),
        wait_s=waits,
        throttle=_throttle(proc),
    )


@dataclass(frozen=True)
class Usage:
    """What a QEMU process did between two samples, per second of wall time."""

    seconds: float
    process: float  # fraction of one CPU
    vcpu: float
    wait_ms: dict[str, float]  # ms waited for a CPU per second, per thread kind
    periods: int
    throttled: int


def usage(a: Sample, b: Sample) -> Usage:
    wall = max(b.at - a.at, 1e-9)
    kinds = sorted(set(a.wait_s) | set(b.wait_s))
    return Usage(
        seconds=wall,
        process=(b.process_s - a.process_s) / wall,
        vcpu=(b.vcpu_s - a.vcpu_s) / wall,
        wait_ms={k: (b.wait_s.get(k, 0) - a.wait_s.get(k, 0)) * 1000 / wall for k in kinds},
        periods=b.throttle[0] - a.throttle[0],
        throttled=b.throttle[1] - a.throttle[1],
    )


def cpu_times() -> list[tuple[float, float]]:
    """(busy, total) seconds so far of each host CPU."""
    out = []
    for t in psutil.cpu_times(percpu=True):
        total = sum(t)
        out.append((total - t.idle - getattr(t, "iowait", 0.0), total))
    return out


def busy(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> list[float]:
    """Fraction of the time each host CPU was busy between two `cpu_times`."""
    return [(b1 - a1) / max(t1 - t0, 1e-9) for (a1, t0), (b1, t1) in zip(a, b, strict=True)]
