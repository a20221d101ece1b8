"""A supervisor that died without lifting its safe state (killed, OOM) left
shed VMs paused or capped: its successor takes the measures over, so they
are lifted once the set is normal rather than never. And `status` says so
while no supervisor runs.

No libvirt connection is made: adopting is reading the state file left
behind; the steps that would need libvirt are not reached on these paths.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.adapters.events_watch import DomainState
from kvmctl.commands.status_view import _safe_lines
from kvmctl.state.supervisor import safe_state_of, supervisor_state
from kvmctl.supervise import Supervisor, safety

pytestmark = pytest.mark.unit

SPEC = """
name: sv-adopt
vms:
  hud:
    criticality: safety
    heartbeat: {period: 200ms, deadline: 1s}
  ivi: {}
safe_state:
  shed: [ivi]
  cap: 20
  heartbeat_missed: [pause]
  crashed: [cap]
"""
DEAD_PID = 2**22 + 1  # above pid_max's default: no such process


def _left(tmp_path: Path, **safe: Any) -> None:
    state = {
        "set": "sv-adopt",
        "pid": DEAD_PID,
        "active": True,  # never wrote its clean stop
        "started_at": 0,
        "vms": {},
        "safe_state": {
            "degraded": True,
            "since": 123.0,
            "active": ["crashed:hud", "heartbeat_missed:hud"],
            "applied": ["cap", "pause"],
            "paused": ["ivi"],
            "uncapped": {"ivi": [100000, None]},
            **safe,
        },
    }
    (tmp_path / "sv-adopt.json").write_text(json.dumps(state))


def _supervisor(tmp_path: Path, spec: str = SPEC) -> tuple[Supervisor, io.StringIO]:
    path = tmp_path / "cockpit.yaml"
    path.write_text(spec)
    out = io.StringIO()
    return Supervisor(path, "test:///default", out=out, directory=tmp_path), out


def _events(out: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, out.getvalue().splitlines()) if e["event"] == name]


def test_measures_left_in_force_are_taken_over(tmp_path: Path) -> None:
    _left(tmp_path)
    sup, out = _supervisor(tmp_path)
    sup.safety.adopt_left_state(tmp_path)
    keeper = sup.safety.keeper
    assert keeper is not None
    assert keeper.state.reasons() == ["crashed:hud", "heartbeat_missed:hud"]
    assert keeper.state.applied == {"pause", "cap"} and keeper.since == 123.0
    summary = keeper.summary()
    assert summary["paused"] == ["ivi"] and summary["uncapped"] == {"ivi": [100000, None]}
    # The missed heartbeat clears on the next beat, not on a second miss.
    assert sup.board.heartbeats["hud"].missed is True
    (adopted,) = _events(out, "safe-state-adopted")
    assert adopted["paused"] == ["ivi"] and adopted["capped"] == ["ivi"]


def test_nothing_is_adopted_after_a_clean_stop_or_from_a_live_supervisor(tmp_path: Path) -> None:
    _left(tmp_path)
    data = json.loads((tmp_path / "sv-adopt.json").read_text())
    lifted = {"degraded": False, "active": [], "applied": [], "paused": [], "uncapped": {}}
    clean = {**data, "active": False, "safe_state": {**data["safe_state"], **lifted}}
    for left in (clean, {**data, "pid": 1, "started_at": 2**40}):
        (tmp_path / "sv-adopt.json").write_text(json.dumps(left))
        sup, out = _supervisor(tmp_path)
        sup.safety.adopt_left_state(tmp_path)
        assert sup.safety.keeper is not None and not sup.safety.keeper.state.degraded
        assert _events(out, "safe-state-adopted") == []


def test_triggers_no_longer_declared_are_lifted_at_once(tmp_path: Path) -> None:
    # The spec changed meanwhile: neither a heartbeat miss nor a crash
    # triggers the safe state, so what was left in force for them is lifted now.
    _left(tmp_path)
    spec = (
        SPEC.replace("    heartbeat: {period: 200ms, deadline: 1s}\n", "")
        .replace("  cap: 20\n", "")
        .replace("  heartbeat_missed: [pause]\n  crashed: [cap]", "  gave_up: [pause]")
    )
    assert "gave_up" in spec and "heartbeat" not in spec
    sup, out = _supervisor(tmp_path, spec)
    sup.safety.adopt_left_state(tmp_path)
    keeper = sup.safety.keeper
    assert keeper is not None and not keeper.state.degraded and not keeper.state.applied
    (adopted,) = _events(out, "safe-state-adopted")
    assert adopted["active"] == [] and adopted["dropped"] == ["crashed:hud", "heartbeat_missed:hud"]
    steps = [(e["action"], e["vm"]) for e in _events(out, "safe-state-step")]
    assert steps == [("resume", "ivi"), ("uncap", "ivi")]


def test_a_malformed_record_adopts_only_what_it_can_read(tmp_path: Path) -> None:
    _left(
        tmp_path,
        active=["heartbeat_missed:hud", "nonsense"],
        paused=["ivi", "nobody"],
        uncapped={"ivi": "x", "hud": [1, 2]},
    )
    sup, _ = _supervisor(tmp_path)
    sup.safety.adopt_left_state(tmp_path)
    keeper = sup.safety.keeper
    assert keeper is not None
    assert keeper.summary()["paused"] == ["ivi"] and keeper.summary()["uncapped"] == {}
    assert keeper.state.applied == {"pause"}
    assert keeper.state.reasons() == ["heartbeat_missed:hud"]


def test_status_says_the_measures_were_left_in_force(tmp_path: Path) -> None:
    _left(tmp_path)
    safe = safe_state_of(supervisor_state("sv-adopt", tmp_path))
    assert safe["degraded"] is True and safe["left_in_force"] is True
    (line,) = _safe_lines([], safe)
    assert "left in force by a supervisor that is gone (ivi paused, ivi capped)" in line
    assert "kvmctl supervise" in line


def test_a_stop_that_could_not_lift_leaves_its_records_to_the_next(tmp_path: Path) -> None:
    # Stopped cleanly (active: false) while libvirtd was away: nothing lifted.
    _left(tmp_path)
    data = json.loads((tmp_path / "sv-adopt.json").read_text())
    (tmp_path / "sv-adopt.json").write_text(json.dumps({**data, "active": False}))
    assert safe_state_of(supervisor_state("sv-adopt", tmp_path))["left_in_force"] is True
    sup, out = _supervisor(tmp_path)
    sup.safety.adopt_left_state(tmp_path)
    assert sup.safety.keeper is not None and sup.safety.keeper.state.applied == {"pause", "cap"}
    assert len(_events(out, "safe-state-adopted")) == 1


def test_a_spec_without_safe_state_lets_go_of_what_was_held(tmp_path: Path) -> None:
    _left(tmp_path)
    spec = SPEC[: SPEC.index("safe_state:")].replace(
        "    heartbeat: {period: 200ms, deadline: 1s}\n", ""
    )
    sup, out = _supervisor(tmp_path, spec)
    assert sup.safety.keeper is None
    sup.safety.adopt_left_state(tmp_path)
    steps = [(e["action"], e["vm"]) for e in _events(out, "safe-state-step")]
    assert steps == [("resume", "ivi"), ("uncap", "ivi")]  # not connected here: both fail
    assert sup.board.safe is not None  # so the records stay for the next supervisor


class _Probe:
    """Stands in for ReadyWatch: the guest answers, or does not yet."""

    answers = True

    def __init__(self, *_args: object) -> None:
        pass

    def __enter__(self) -> _Probe:
        return self

    def __exit__(self, *_exc: object) -> None:
        pass

    def restored(self) -> _Probe:
        return self

    def wait(self, _timeout: float) -> float:
        if not self.answers:
            raise safety.NotReady("the guest agent did not answer")
        return 0.0


@pytest.mark.parametrize(("answers", "phase"), [(True, "unknown"), (False, "recovering")])
def test_a_crash_taken_over_clears_only_once_the_vm_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: bool, phase: str
) -> None:
    # Killed while the VM was booting: the domain runs, but is it ready?
    _left(tmp_path, active=["crashed:hud"])
    sup, _ = _supervisor(tmp_path)
    conn = libvirt.open("test:///default")  # libvirt's own in-process test driver
    monkeypatch.setattr(sup.watch, "conn", conn)
    running = {"sv-adopt-hud": DomainState("running", "booted")}
    monkeypatch.setattr(sup.watch, "states", lambda: running)
    monkeypatch.setattr(_Probe, "answers", answers)
    monkeypatch.setattr(safety, "ReadyWatch", _Probe)
    sup.safety.adopt_left_state(tmp_path)
    # "recovering": the first reconcile watches its readiness before it counts as ready.
    assert sup.board.vms["hud"].phase == phase
    assert sup.board.vms["ivi"].phase == "unknown"
    conn.close()


def test_a_missed_heartbeat_nobody_hears_any_more_is_dropped(tmp_path: Path) -> None:
    _left(tmp_path, active=["heartbeat_missed:hud"])
    sup, _ = _supervisor(tmp_path)
    sup.board.heartbeats.clear()  # as under a remote URI: no listener here
    sup.safety.adopt_left_state(tmp_path)
    keeper = sup.safety.keeper
    assert keeper is not None and not keeper.state.degraded
