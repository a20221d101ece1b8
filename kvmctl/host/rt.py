"""Real-time vCPUs on hosts with RT group scheduling (cgroup v1 cpu.rt_runtime_us).

Under RT group scheduling a thread may only be SCHED_FIFO/RR if its cgroup has
an RT budget, and libvirt creates every domain cgroup with none, so a domain
with <vcpusched> fails to start. The recipe that works: start the domain
paused, give `machine`, the domain's cgroup and each vCPU cgroup a budget
(parents first: a parent must hold at least the sum of its children), set the
policy on each vCPU thread, then resume.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

from kvmctl.errors import HostError
from kvmctl.host.threads import QemuProcess, cgroup_dir

RUNTIME = "cpu.rt_runtime_us"
# Budgets are read, summed and written on parent cgroups the VMs share; the
# Applier starts the VMs of a level in parallel threads, so one at a time.
_BUDGETS = threading.Lock()
POLICIES = {"fifo": os.SCHED_FIFO, "rr": os.SCHED_RR, "other": os.SCHED_OTHER}


@dataclass(frozen=True)
class RtStep:
    """One thing done to the host, said in words for apply's report."""

    path: str
    old: int
    new: int


def _read(path: Path) -> int:
    return int((path / RUNTIME).read_text().strip())


def _write(path: Path, value: int, steps: list[RtStep]) -> None:
    old = _read(path)
    if old == value:
        return
    try:
        (path / RUNTIME).write_text(str(value))
    except OSError as err:
        raise HostError(
            f"cannot give cgroup {path} a real-time budget of {value} us: {err.strerror}"
        ) from None
    steps.append(RtStep(str(path), old, value))


def _children_sum(path: Path) -> int:
    return sum(_read(child) for child in path.iterdir() if (child / RUNTIME).exists())


def make_realtime(
    qemu: QemuProcess,
    policy: str,
    priority: int,
    domain_runtime_us: int,
    vcpu_runtime_us: int,
    steps: list[RtStep],
) -> None:
    """Budget the domain's cgroups and switch its vCPU threads to `policy`.

    Appends every change to `steps` as it is made, so apply can report them
    and give the budgets back even when a later step fails."""
    with _BUDGETS:
        _budget(qemu, domain_runtime_us, vcpu_runtime_us, steps)
    set_policy(qemu, policy, priority)


def _budget(
    qemu: QemuProcess, domain_runtime_us: int, vcpu_runtime_us: int, steps: list[RtStep]
) -> None:
    vcpus = qemu.vcpus
    if not vcpus:
        raise HostError(f"QEMU process {qemu.pid} has no vCPU threads to make real-time")
    first = cgroup_dir(vcpus[0].tid, "cpu", qemu.pid)
    if first is None or not (first / RUNTIME).exists():
        raise HostError("this host has no RT group scheduling files for the domain's cgroups")
    domain_dir = first.parent
    # Grow from the top: machine, then the domain, then each vCPU.
    chain = [p for p in reversed(domain_dir.parents) if (p / RUNTIME).exists()][1:]
    for parent in chain:
        needed = _children_sum(parent) - _read_or_zero(parent, domain_dir) + domain_runtime_us
        if _read(parent) < needed:
            _write(parent, needed, steps)
    _write(domain_dir, domain_runtime_us, steps)
    for thread in vcpus:
        vdir = cgroup_dir(thread.tid, "cpu", qemu.pid)
        if vdir is not None and vdir != domain_dir:
            _write(vdir, vcpu_runtime_us, steps)


def set_policy(qemu: QemuProcess, policy: str, priority: int) -> None:
    """Schedule every vCPU thread of `qemu` with `policy` ("other" for none).
    Where RT group scheduling is on, real-time needs the budgets first."""
    for thread in qemu.vcpus:
        try:
            os.sched_setscheduler(thread.tid, POLICIES[policy], os.sched_param(priority))
        except OSError as err:
            raise HostError(
                f"cannot make vCPU thread {thread.tid} ({thread.name}) {policy} priority "
                f"{priority}: {err.strerror}"
            ) from None


def _read_or_zero(parent: Path, domain_dir: Path) -> int:
    """The domain's own current budget if `parent` directly contains it."""
    for candidate in (domain_dir, *domain_dir.parents):
        if candidate.parent == parent and (candidate / RUNTIME).exists():
            return _read(candidate)
    return 0


def policies(qemu: QemuProcess) -> dict[int, tuple[str, int]]:
    """Each vCPU thread's policy and priority as they are, for `undo`."""
    return {t.tid: (t.policy, t.priority) for t in qemu.vcpus}


def undo(steps: list[RtStep], was: dict[int, tuple[str, int]] | None = None) -> None:
    """Put the vCPU threads in `was` back to their policy (a live update's
    change; a stopped domain's threads are gone), then give back budgets,
    children first: a budget cannot shrink below what the real-time threads
    still in its cgroup need. Best effort: a vanished thread or cgroup is fine."""
    for tid, (policy, priority) in (was or {}).items():
        if policy in POLICIES:
            try:
                os.sched_setscheduler(tid, POLICIES[policy], os.sched_param(priority))
            except OSError:
                pass
    with _BUDGETS:
        _give_back(steps)


def _give_back(steps: list[RtStep]) -> None:
    for step in reversed(steps):
        try:
            Path(step.path, RUNTIME).write_text(str(step.old))
        except OSError:
            pass
