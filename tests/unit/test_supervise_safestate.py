"""The safe state's rules as tables: which event, which VMs, what action,
when to return to normal (kvmctl.supervise.safestate, pure)."""

from __future__ import annotations

import pytest

from kvmctl.spec import parse_spec
from kvmctl.supervise.safestate import (
    Happened,
    SafeConfig,
    SafeState,
    Step,
    adopted,
    capped_quota,
    lifted,
    on_event,
)

pytestmark = pytest.mark.unit

SPEC = """\
name: t
vms:
  cluster: {criticality: safety, heartbeat: {period: 200ms, deadline: 1s}}
  ivi: {}
  passenger: {}
  other: {}
safe_state:
  shed: [ivi, passenger]
  cap: 20%
  heartbeat_missed: [pause, restart]
  crashed: [cap]
  gave_up: []
"""


def config(text: str = SPEC) -> SafeConfig:
    found = SafeConfig.from_spec(parse_spec(text))
    assert found is not None
    return found


def run(events: list[Happened], cfg: SafeConfig | None = None) -> tuple[SafeState, list[Step]]:
    """Feed events one after the other; the final state and every step."""
    cfg = cfg or config()
    state = SafeState()
    steps: list[Step] = []
    for event in events:
        t = on_event(cfg, state, event)
        state = t.state
        steps += t.steps
    return state, steps


def test_config_from_spec() -> None:
    cfg = config()
    assert cfg.watch == ("cluster",) and cfg.shed == ("ivi", "passenger") and cfg.cap == 20.0
    assert cfg.actions == {
        "heartbeat_missed": frozenset({"pause", "restart"}),
        "crashed": frozenset({"cap"}),
        "gave_up": frozenset(),
    }
    assert SafeConfig.from_spec(parse_spec("name: t\nvms:\n  a: {}\n")) is None


@pytest.mark.parametrize(
    ("event", "entered", "steps"),
    [
        (
            Happened("heartbeat-missed", "cluster"),
            ("heartbeat_missed:cluster",),
            [Step("pause", "ivi"), Step("pause", "passenger"), Step("restart", "cluster")],
        ),
        (
            Happened("failed", "cluster"),
            ("crashed:cluster",),
            [Step("cap", "ivi", 20.0), Step("cap", "passenger", 20.0)],
        ),
        (Happened("gave-up", "cluster"), ("gave_up:cluster",), []),
    ],
)
def test_each_trigger_from_normal(event: Happened, entered: tuple[str], steps: list[Step]) -> None:
    t = on_event(config(), SafeState(), event)
    assert t.entered == entered and list(t.steps) == steps
    assert t.state.degraded and t.changed and t.ignored is None


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (Happened("heartbeat-missed", "ivi"), "VM 'ivi' is not watched"),
        (Happened("failed", "other"), "VM 'other' is not watched"),
        (
            Happened("heartbeat-missed", "cluster", phase="down"),
            "stopped by an operator: its heartbeat is not missed",
        ),
        (
            Happened("heartbeat-missed", "cluster", phase="absent"),
            "stopped by an operator: its heartbeat is not missed",
        ),
    ],
)
def test_events_that_change_nothing(event: Happened, why: str) -> None:
    t = on_event(config(), SafeState(), event)
    assert t.ignored == why and not t.changed and t.steps == () and not t.state.degraded


def test_undeclared_trigger_is_not_acted_on() -> None:
    cfg = config(SPEC.replace("  gave_up: []\n", ""))
    t = on_event(cfg, SafeState(), Happened("gave-up", "cluster"))
    assert t.ignored == "safe_state declares no gave_up" and not t.state.degraded


def test_a_repeat_changes_nothing_and_restarts_once() -> None:
    state, steps = run([Happened("heartbeat-missed", "cluster")] * 3)
    assert state.reasons() == ["heartbeat_missed:cluster"]
    assert [s for s in steps if s.kind == "restart"] == [Step("restart", "cluster")]
    assert len(steps) == 3


def test_heartbeat_resumed_returns_to_normal() -> None:
    state, steps = run(
        [Happened("heartbeat-missed", "cluster"), Happened("heartbeat-resumed", "cluster")]
    )
    assert state == SafeState() and not state.degraded
    assert steps[-2:] == [Step("resume", "ivi"), Step("resume", "passenger")]


def test_ready_clears_a_crash_but_not_a_missed_heartbeat() -> None:
    state, steps = run(
        [
            Happened("heartbeat-missed", "cluster"),
            Happened("failed", "cluster"),
            Happened("ready", "cluster"),
        ]
    )
    assert state.reasons() == ["heartbeat_missed:cluster"]
    assert state.applied == frozenset({"pause"})
    # The crash added the cap, ready took it back; the pause stays with the miss.
    assert [s.kind for s in steps] == ["pause", "pause", "restart", "cap", "cap", "uncap", "uncap"]


def test_ready_clears_a_spent_budget() -> None:
    state, _ = run([Happened("gave-up", "cluster"), Happened("ready", "cluster")])
    assert state == SafeState()


def test_ready_or_resumed_without_anything_active_changes_nothing() -> None:
    for what in ("ready", "heartbeat-resumed"):
        t = on_event(config(), SafeState(), Happened(what, "cluster"))  # type: ignore[arg-type]
        assert not t.changed and t.steps == () and t.ignored is None


def test_measures_stay_while_any_trigger_asks_for_them() -> None:
    spec = SPEC.replace("crashed: [cap]", "crashed: [pause]").replace("  cap: 20%\n", "")
    cfg = config(spec)
    state, steps = run(
        [Happened("heartbeat-missed", "cluster"), Happened("failed", "cluster")], cfg
    )
    assert state.applied == frozenset({"pause"})
    assert [s.kind for s in steps].count("pause") == 2  # once per shed VM, not per trigger
    t = on_event(cfg, state, Happened("ready", "cluster"))
    assert t.cleared == ("crashed:cluster",) and t.steps == ()  # the miss still pauses
    t = on_event(cfg, t.state, Happened("heartbeat-resumed", "cluster"))
    assert list(t.steps) == [Step("resume", "ivi"), Step("resume", "passenger")]
    assert not t.state.degraded


def test_two_watched_vms_each_clear_their_own() -> None:
    spec = SPEC.replace("  ivi: {}\n", "  ivi: {}\n  adas: {criticality: safety}\n")
    cfg = config(spec)
    assert cfg.watch == ("adas", "cluster")
    state, _ = run([Happened("failed", "adas"), Happened("failed", "cluster")], cfg)
    t = on_event(cfg, state, Happened("ready", "adas"))
    assert t.state.reasons() == ["crashed:cluster"] and t.steps == ()
    t = on_event(cfg, t.state, Happened("ready", "cluster"))
    assert [s.kind for s in t.steps] == ["uncap", "uncap"] and not t.state.degraded


def test_cap_goes_before_pause_and_resume_before_uncap() -> None:
    spec = SPEC.replace("heartbeat_missed: [pause, restart]", "heartbeat_missed: [pause]")
    cfg = config(spec.replace("gave_up: []", "gave_up: [cap]"))
    state, steps = run([Happened("heartbeat-missed", "cluster")], cfg)
    t = on_event(cfg, state, Happened("failed", "cluster"))
    assert [s.kind for s in t.steps] == ["cap", "cap"]
    t = on_event(cfg, t.state, Happened("heartbeat-resumed", "cluster"))
    assert [s.kind for s in t.steps] == ["resume", "resume"]
    both = SafeState(frozenset({("heartbeat_missed", "cluster")}), frozenset({"pause", "cap"}))
    t = on_event(cfg, both, Happened("heartbeat-resumed", "cluster"))
    assert [s.kind for s in t.steps] == ["resume", "resume", "uncap", "uncap"]


MISSED = ("heartbeat_missed", "cluster")
CRASHED = ("crashed", "cluster")


@pytest.mark.parametrize(
    ("active", "applied", "kept", "steps", "dropped"),
    [
        # left as it should be: taken over as it is, nothing to do
        ({MISSED}, {"pause"}, {MISSED}, [], []),
        # a measure no active trigger asks for any more is lifted
        ({MISSED}, {"pause", "cap"}, {MISSED}, ["uncap", "uncap"], []),
        # a measure an active trigger asks for but was never applied is applied
        ({MISSED, CRASHED}, {"pause"}, {MISSED, CRASHED}, ["cap", "cap"], []),
        # a trigger of a VM no longer watched is dropped, and what it held lifted
        ({("crashed", "gone")}, {"cap"}, set(), ["uncap", "uncap"], ["crashed:gone"]),
        # a declared trigger without shed measures (gave_up: []) is kept, asking nothing
        ({("gave_up", "cluster")}, set(), {("gave_up", "cluster")}, [], []),
    ],
)
def test_adopted_brings_measures_in_line_with_the_kept_triggers(
    active: set[tuple[str, str]],
    applied: set[str],
    kept: set[tuple[str, str]],
    steps: list[str],
    dropped: list[str],
) -> None:
    shed = frozenset(config().shed)
    paused = shed if "pause" in applied else frozenset()
    capped = shed if "cap" in applied else frozenset()
    t = adopted(config(), frozenset(active), paused, capped)
    assert t.state.active == kept
    assert [s.kind for s in t.steps] == steps
    assert list(t.cleared) == dropped


def test_adopted_drops_what_the_spec_no_longer_declares() -> None:
    cfg = config(SPEC.replace("  gave_up: []\n", ""))
    t = adopted(cfg, frozenset({("gave_up", "cluster")}), frozenset(cfg.shed), frozenset())
    assert not t.state.degraded and t.cleared == ("gave_up:cluster",)
    assert [s.kind for s in t.steps] == ["resume", "resume"]


def test_adopted_lets_go_of_vms_no_longer_shed_whatever_stays_in_force() -> None:
    # `old` was shed when it was paused and capped; the spec sheds it no more.
    t = adopted(config(), frozenset({MISSED}), frozenset({"ivi", "old"}), frozenset({"old"}))
    assert t.state.active == {MISSED}
    assert [(s.kind, s.vm) for s in t.steps] == [("resume", "old"), ("uncap", "old")]


def test_lifted_undoes_every_measure_resume_first() -> None:
    state = SafeState(frozenset({MISSED, CRASHED}), frozenset({"pause", "cap"}))
    t = lifted(config(), state)
    assert not t.state.degraded and not t.state.applied
    assert [s.kind for s in t.steps] == ["resume", "resume", "uncap", "uncap"]
    assert t.cleared == ("crashed:cluster", "heartbeat_missed:cluster")


def test_step_as_dict() -> None:
    assert Step("cap", "ivi", 20.0).as_dict() == {"action": "cap", "vm": "ivi", "limit_pct": 20.0}
    assert Step("pause", "ivi").as_dict() == {"action": "pause", "vm": "ivi"}


@pytest.mark.parametrize(
    ("period", "quota", "limit", "expected"),
    [
        (100_000, None, 20, 20_000),  # uncapped VM: the declared cap
        (100_000, -1, 20, 20_000),  # libvirt's "no quota"
        (100_000, 50_000, 20, 20_000),  # tighter than its own limit
        (100_000, 10_000, 50, 10_000),  # never more than its own limit
        (100_000, None, 0.5, 1_000),  # the cgroup minimum
        (50_000, None, None, 50_000),  # no cap given: one CPU
    ],
)
def test_a_cap_frees_cpu_and_never_gives_more(
    period: int, quota: int | None, limit: float | None, expected: int
) -> None:
    assert capped_quota(period, quota, limit) == expected
