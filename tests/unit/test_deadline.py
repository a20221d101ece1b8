"""Boot deadlines: met or missed, and `kvmctl plan`'s warning when the recorded
history says a deadline cannot be met by a cold boot (kvmctl.planner.deadline)."""

from __future__ import annotations

import pytest

from kvmctl.planner import deadline
from kvmctl.planner.plan import PlanOptions, make_plan
from kvmctl.state import history
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

SPEC = """\
name: t
vms:
  fast: {ready: {deadline: 5s}}
  slow: {ready: {deadline: 2s}}
  free: {}
"""


@pytest.mark.parametrize(
    ("limit", "seconds", "expected"),
    [(2.0, 1.4, True), (2.0, 2.0, True), (2.0, 2.001, False), (None, 1.0, None), (2.0, None, None)],
)
def test_met(limit: float | None, seconds: float | None, expected: bool | None) -> None:
    assert deadline.met(limit, seconds) is expected


def test_verdict_and_cause_carry_the_figures() -> None:
    assert deadline.verdict(2.0, 1.4) == "deadline 2 s met (1.40 s)"
    assert deadline.verdict(0.001, 4.625) == "deadline 0.001 s missed (4.62 s)"
    assert deadline.missed("cluster", 0.5, 4.61) == (
        "VM 'cluster' missed its ready.deadline of 0.5 s (ready after 4.61 s), "
        "and ready.deadline_fatal is set"
    )


def test_cold_warning_names_vm_deadline_and_figure() -> None:
    vms = spec(SPEC).vms
    best = {"fast": 4.2, "slow": 4.625, "free": 9.0}
    assert deadline.cold_warnings(vms, best) == [
        "VM 'slow': ready.deadline 2 s cannot be met by a cold boot: the fastest one recorded "
        "was ready 4.62 s after apply began"
    ]


@pytest.mark.parametrize(
    "best",
    [
        {},  # nothing recorded yet
        {"slow": 2.0},  # exactly the deadline is met
        {"fast": 4.9, "slow": 1.5},
        {"free": 100.0},  # no deadline, nothing to warn about
        {"gone": 100.0},  # a VM no longer in the spec
    ],
)
def test_no_warning_when_a_cold_boot_made_it(best: dict[str, float]) -> None:
    assert deadline.cold_warnings(spec(SPEC).vms, best) == []


def test_plan_warns_from_the_options_it_is_given() -> None:
    s = spec(SPEC)
    assert not any("deadline" in w for w in make_plan(s, facts()).warnings)
    plan = make_plan(s, facts(), options=PlanOptions(best_cold_ready={"slow": 3.0, "fast": 3.0}))
    assert [w for w in plan.warnings if "deadline" in w] == [
        "VM 'slow': ready.deadline 2 s cannot be met by a cold boot: the fastest one recorded "
        "was ready 3.00 s after apply began"
    ]
    assert not plan.problems  # a warning: apply still goes ahead


def test_plan_warns_only_about_its_hosts_vms() -> None:
    s = spec(
        "name: t\nhosts:\n  b: {uri: 'qemu+ssh://b/system'}\n"
        "vms:\n  a: {ready: {deadline: 1s}}\n  r: {host: b, ready: {deadline: 1s}}\n"
    )
    options = PlanOptions(best_cold_ready={"a": 2.0, "r": 2.0})
    here = [w for w in make_plan(s, facts(), options=options).warnings if "deadline" in w]
    there = [
        w for w in make_plan(s, facts(), options=options, host="b").warnings if "deadline" in w
    ]
    assert [w.split(":")[0] for w in here] == ["VM 'a'"]
    assert [w.split(":")[0] for w in there] == ["VM 'r'"]


def test_history_feeds_the_rule() -> None:
    doc = history.merge_ready({}, "t", {"slow": history.Readiness(4.0, 2.0, False)}, at=1.0)
    assert deadline.cold_warnings(spec(SPEC).vms, history.best_cold(doc))[0].startswith(
        "VM 'slow': ready.deadline 2 s"
    )
