"""rt.undo after a live update: the vCPU threads' policies go back first, then the
budgets (a budget cannot shrink below what real-time threads still in its
cgroup need), best effort for threads and cgroups that are gone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmctl.host import rt
from kvmctl.host.threads import QemuProcess, QemuThread

pytestmark = pytest.mark.unit


def _thread(tid: int, kind: str, policy: str, priority: int) -> QemuThread:
    return QemuThread(
        tid=tid,
        name=f"t{tid}",
        kind=kind,
        index=tid if kind == "vcpu" else None,
        affinity=frozenset({1}),
        policy=policy,
        priority=priority,
        last_cpu=None,
        cpu_seconds=0.0,
    )


def test_policies_are_the_vcpu_threads_only() -> None:
    qemu = QemuProcess(
        pid=10,
        started=0.0,
        hugetlb_kib=0,
        rss_kib=0,
        threads=(
            _thread(10, "emulator", "other", 0),
            _thread(12, "vcpu", "fifo", 10),
            _thread(11, "vcpu", "other", 0),
        ),
    )
    assert rt.policies(qemu) == {11: ("other", 0), 12: ("fifo", 10)}


def test_undo_puts_policies_back_before_the_budgets_shrink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup = tmp_path / "vcpu0"
    cgroup.mkdir()
    (cgroup / rt.RUNTIME).write_text("950000")
    calls: list[tuple[int, int, int, str]] = []

    def setscheduler(tid: int, policy: int, param: os.sched_param) -> None:
        budget = (cgroup / rt.RUNTIME).read_text()
        calls.append((tid, policy, param.sched_priority, budget))
        if tid == 13:
            raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(rt.os, "sched_setscheduler", setscheduler)
    steps = [rt.RtStep(str(cgroup), 0, 950000)]
    was = {13: ("other", 0), 12: ("other", 0), 14: ("batch", 0)}
    rt.undo(steps, was)
    # The vanished thread 13 did not stop 12; "batch" is not a policy kvmctl sets.
    assert calls == [(13, os.SCHED_OTHER, 0, "950000"), (12, os.SCHED_OTHER, 0, "950000")]
    assert (cgroup / rt.RUNTIME).read_text() == "0"


def test_undo_without_policies_gives_back_every_budget_it_can(tmp_path: Path) -> None:
    parent, child = tmp_path / "dom", tmp_path / "dom" / "vcpu0"
    child.mkdir(parents=True)
    (parent / rt.RUNTIME).write_text("950000")
    (child / rt.RUNTIME).write_text("900000")
    gone = tmp_path / "gone"
    steps = [
        rt.RtStep(str(parent), 100, 950000),
        rt.RtStep(str(gone), 0, 5),
        rt.RtStep(str(child), 0, 900000),
    ]
    rt.undo(steps)
    assert (child / rt.RUNTIME).read_text() == "0"
    assert (parent / rt.RUNTIME).read_text() == "100"
