"""The Applier's warm start: a fitting saved state is restored instead of a
boot (clock set, readiness re-checked, judged like any boot); a failed
restore falls back to a cold boot that says so and saves again; a missed
fatal deadline after a warm start still fails the run. libvirt, readiness,
the post-start step and the saved states are stood in for."""

from __future__ import annotations

import time

import pytest

from kvmctl.cockpit import applier as applier_module
from kvmctl.cockpit import poststart, warm_boot
from kvmctl.cockpit.outcome import VmOutcome
from kvmctl.errors import ApplyError
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.warm import BootChoice
from tests.unit.test_applier_deadline import _applier, _Ready, _starts, _Virt

pytestmark = pytest.mark.unit


class _Restored(_Ready):
    def restored(self) -> _Restored:
        return self


class _Warm:
    def __init__(self, choice: BootChoice, fail: str | None = None) -> None:
        self.choice, self.fail = choice, fail
        self.calls: list[str] = []

    def choose(self, _plan: VmPlan, _kind: str) -> BootChoice:
        return self.choice

    def restore_paused(self, _plan: VmPlan) -> None:
        self.calls.append("restore")
        if self.fail:
            raise ApplyError(self.fail)

    def set_clock(self, _plan: VmPlan, _timeout: float) -> float:
        self.calls.append("clock")
        return 0.02

    def discard(self, _plan: VmPlan) -> None:
        self.calls.append("discard")

    def save(self, _plan: VmPlan) -> str:
        self.calls.append("save")
        return "warm-start state saved"


@pytest.fixture(autouse=True)
def _no_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(applier_module, "ReadyWatch", _Restored)
    monkeypatch.setattr(warm_boot, "ReadyWatch", _Restored)
    monkeypatch.setattr(poststart, "after_start", lambda *_a, **_k: [])


WARM_VM = "name: t\nvms:\n  a: {boot: {mode: warm}, ready: {deadline: 30s}}\n"


def _run(text: str, warm: _Warm, since: float | None = None) -> tuple[_Virt, VmOutcome]:
    virt = _Virt()
    app = _applier(_starts(text), virt, since)
    app.warm_boot.warm = warm  # type: ignore[assignment]
    return virt, app.run().outcomes["a"]


def test_a_fitting_state_is_restored_not_booted() -> None:
    warm = _Warm(BootChoice("warm"))
    virt, outcome = _run(WARM_VM, warm)
    assert outcome.boot == "warm" and outcome.deadline_met is True
    assert warm.calls == ["restore", "clock"]
    assert ("start_paused", "t-a") not in virt.calls and ("resume", "t-a") in virt.calls
    assert any("guest clock set" in n for n in outcome.notes)


def test_a_failed_restore_falls_back_to_cold_says_so_and_saves_again() -> None:
    warm = _Warm(BootChoice("warm"), fail="no such snapshot")
    virt, outcome = _run(WARM_VM, warm)
    assert outcome.boot == "cold"
    assert warm.calls == ["restore", "discard", "save"]
    assert ("start_paused", "t-a") in virt.calls
    notes = outcome.notes
    assert "warm start failed: no such snapshot; fell back to a cold boot" in notes
    assert outcome.fallback == "no such snapshot"
    assert "warm-start state saved" in notes


def test_a_cold_choice_discards_first_and_saves_after_ready() -> None:
    warm = _Warm(BootChoice("cold", discard=True, save=True, reason="saved state outdated: x"))
    _virt, outcome = _run(WARM_VM, warm)
    assert outcome.boot == "cold" and warm.calls == ["discard", "save"]
    assert "cold boot: saved state outdated: x" in outcome.notes


def test_a_missed_fatal_deadline_after_a_warm_start_fails_without_fallback() -> None:
    text = "name: t\nvms:\n  a: {boot: {mode: warm}, ready: {deadline: 1s, deadline_fatal: true}}\n"
    warm = _Warm(BootChoice("warm"))
    with pytest.raises(ApplyError, match="missed its ready.deadline of 1 s"):
        _run(text, warm, since=time.monotonic() - 2.0)
    assert warm.calls == ["restore", "clock"]
