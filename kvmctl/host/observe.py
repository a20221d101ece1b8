"""Read one VM's QEMU where its settings take effect: thread affinity and
scheduling from /proc, hugepages from the process status, shares and quota
from the cgroup files, each NIC's bridge from sysfs. Plain data out
(kvmctl.planner.live.Observation), for the planner's LiveState and for
`kvmctl audit`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psutil

from kvmctl.host import threads
from kvmctl.planner.live import Observation, ThreadObs


def observe(
    domain: str,
    state: str,
    taps: Iterable[str] = (),
    sys_net: Path = Path("/sys/class/net"),
) -> Observation:
    if state not in ("running", "paused"):
        return Observation(state)
    pid = threads.qemu_pid(domain)
    if pid is None:
        return Observation(state)
    try:
        qemu = threads.inspect(pid)
    except (OSError, psutil.Error):  # it exited while read, or /proc hides it
        return Observation(state)

    def obs(t: threads.QemuThread) -> ThreadObs:
        return ThreadObs(t.affinity, t.policy, t.priority)

    quotas: list[int | None] = []
    shares = None
    for t in qemu.vcpus:
        vdir = threads.cgroup_dir(t.tid, "cpu", pid)
        quotas.append(read_int(vdir / "cpu.cfs_quota_us") if vdir else None)
        if shares is None and vdir is not None:
            shares = read_int(vdir.parent / "cpu.shares")
    return Observation(
        state=state,
        pid=pid,
        vcpus=tuple(obs(t) for t in qemu.vcpus),
        vcpu_quota_us=tuple(quotas),
        emulator=tuple(obs(t) for t in qemu.emulator),
        iothreads=tuple(obs(t) for t in qemu.threads if t.kind == "iothread"),
        hugetlb_kib=qemu.hugetlb_kib,
        shares=shares,
        nic_bridges={tap: _master(sys_net, tap) for tap in taps},
    )


def _master(sys_net: Path, dev: str) -> str | None:
    try:
        return (sys_net / dev / "master").resolve(strict=True).name
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    """A cgroup or /proc file holding one integer; None when unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
