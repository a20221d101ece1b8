"""The Applier measures each VM's boot to ready from its `since` and judges the
boot deadline: a miss is reported, and rolls the run back only with
ready.deadline_fatal. libvirt, readiness and the post-start step are stood in for."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from kvmctl.cockpit import applier as applier_module
from kvmctl.cockpit import poststart, readiness
from kvmctl.cockpit.applier import Applier
from kvmctl.cockpit.outcome import VmOutcome
from kvmctl.errors import ApplyError
from kvmctl.planner.diff import Action
from kvmctl.planner.plan import Plan, make_plan
from kvmctl.state import history
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

BOOT = 0.05  # seconds each fake guest takes from resume to ready


class _Virt:
    conn = None

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda domain, *_a, **_k: self.calls.append((name, domain))


class _Ready:
    def __init__(self, _conn: object, _domain: str, _probe: str) -> None:
        pass

    def __enter__(self) -> _Ready:
        return self

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        return None

    def wait(self, _timeout: float) -> float:
        time.sleep(BOOT)
        return time.monotonic()


@pytest.fixture(autouse=True)
def _no_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier_module, "ReadyWatch", _Ready)
    monkeypatch.setattr(poststart, "after_start", lambda *_a, **_k: [])


def _starts(text: str) -> Plan:
    plan = make_plan(spec(text), facts())
    return replace(plan, actions=[Action("start", p.name, p.domain, ()) for p in plan.vms.values()])


def _applier(plan: Plan, virt: _Virt, since: float | None = None) -> Applier:
    return Applier(
        virt,  # type: ignore[arg-type]
        plan,
        rt_by_thread=False,
        pool_path="/nowhere",
        host_cpus=2,
        since=since,
    )


def test_met_and_missed_are_reported_from_since() -> None:
    plan = _starts(
        "name: t\nvms:\n  ok: {ready: {deadline: 30s}}\n  late: {ready: {deadline: 1s}}\n"
        "  free: {}\n"
    )
    result = _applier(plan, _Virt(), since=time.monotonic() - 2.0).run()
    ok, late, free = (result.outcomes[vm] for vm in ("ok", "late", "free"))
    assert (ok.deadline_s, ok.deadline_met) == (30.0, True)
    assert (late.deadline_s, late.deadline_met) == (1.0, False)
    assert (free.deadline_s, free.deadline_met) == (None, None)
    for o in (ok, late, free):
        assert o.since_apply_s is not None and o.ready_seconds is not None
        # The whole 2 s before the run count, not only the VM's own boot.
        assert 2.0 + BOOT <= o.since_apply_s < 2.0 + 5.0
        assert o.ready_seconds < o.since_apply_s


def test_without_since_the_run_start_counts() -> None:
    plan = _starts("name: t\nvms:\n  a: {ready: {deadline: 10s}}\n")
    outcome = _applier(plan, _Virt()).run().outcomes["a"]
    assert outcome.since_apply_s is not None and BOOT <= outcome.since_apply_s < 5.0
    assert outcome.deadline_met is True


def test_a_missed_fatal_deadline_fails_and_rolls_back() -> None:
    plan = _starts("name: t\nvms:\n  a: {ready: {deadline: 1s, deadline_fatal: true}}\n")
    virt = _Virt()
    with pytest.raises(ApplyError) as err:
        _applier(plan, virt, since=time.monotonic() - 2.0).run()
    assert str(err.value).startswith(
        "apply of 't' failed and was rolled back: VM 'a' missed its ready.deadline of 1 s "
        "(ready after 2."
    )
    assert err.value.exit_code == 1
    # Started and resumed, then stopped again by the rollback.
    started = virt.calls.index(("start_paused", "t-a"))
    assert virt.calls[started + 1] == ("resume", "t-a")
    assert virt.calls[started + 2 :] and set(virt.calls[started + 2 :]) == {("stop", "t-a")}


def test_a_met_fatal_deadline_is_just_met() -> None:
    plan = _starts("name: t\nvms:\n  a: {ready: {deadline: 30s, deadline_fatal: true}}\n")
    assert _applier(plan, _Virt()).run().outcomes["a"].deadline_met is True


def test_the_boots_are_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_HISTORY_DIR", str(tmp_path))
    booted = VmOutcome("a", "create", since_apply_s=4.5, deadline_s=2.0, deadline_met=False)
    readiness.remember("t", [booted, VmOutcome("b", "unchanged")], "restart")
    doc = history.read("t")
    assert list(doc["vms"]) == ["a"]
    assert doc["vms"]["a"]["ready"] | {"at": 0} == {
        "seconds": 4.5,
        "at": 0,
        "after": "restart",
        "cold": True,
        "deadline": 2.0,
        "met": False,
        "best_cold_seconds": 4.5,
    }
