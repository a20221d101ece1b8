"""kvmctl.observe.metrics: status rows + libvirt statistics + audit -> metric families,
on made-up data, and through the text format Prometheus reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from kvmctl.observe.metrics import STATES, Scrape, failed, families, vcpu_times
from kvmctl.observe.status import VmStatus

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
DASHBOARD = DOCS.parent / "grafana-cockpit.json"
S = 1_000_000_000


def row(vm: str = "hud", state: str = "running", **kw: Any) -> VmStatus:
    running = state in ("running", "paused")
    base: dict[str, Any] = {
        "ready": True if running else None,
        "uptime_s": 12.5 if running else None,
        "pid": 4242 if running else None,
        "hugepages_planned_kib": 128 * 1024,
        "hugepages_actual_kib": 128 * 1024 if running else None,
    }
    base.update(kw)
    return VmStatus(vm=vm, domain=f"s-{vm}", state=state, **base)


def samples(fams: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in fams for s in fam.samples}


def value(fams: list[Metric], name: str, **labels: str) -> float | None:
    want = tuple(sorted({"set": "s", **labels}.items()))
    return samples(fams).get((name, want))


def names_of(fams: list[Metric], name: str) -> list[dict[str, str]]:
    return [s.labels for fam in fams for s in fam.samples if s.name == name]


STATS = {
    "s-hud": {
        "state.state": 1,
        "cpu.time": 7 * S,
        "vcpu.current": 2,
        "vcpu.maximum": 2,
        "vcpu.0.time": 3 * S,
        "vcpu.0.delay": S // 2,
        "vcpu.1.time": S + S // 4,
        "vcpu.1.delay": 0,
    }
}


def test_running_vm_every_family() -> None:
    r = row(restarts=2, snapshots=3, last_snapshot_seconds=1.25, last_migration_seconds=4.5)
    fams = families(
        Scrape(
            "s",
            [r],
            STATS,
            drift={"hud": 2},
            checks={"hud": 9},
            supervisor_alive=True,
            seconds=0.031,
        )
    )
    assert value(fams, "kvmctl_up") == 1.0
    assert value(fams, "kvmctl_supervisor_up") == 1.0
    assert value(fams, "kvmctl_scrape_duration_seconds") == 0.031
    assert value(fams, "kvmctl_vm_info", vm="hud", domain="s-hud") == 1.0
    assert value(fams, "kvmctl_vm_state", vm="hud", state="running") == 1.0
    assert value(fams, "kvmctl_vm_ready", vm="hud") == 1.0
    assert value(fams, "kvmctl_vm_uptime_seconds", vm="hud") == 12.5
    assert value(fams, "kvmctl_vm_supervisor_restarts_total", vm="hud") == 2.0
    assert value(fams, "kvmctl_vm_drift_items", vm="hud") == 2.0
    assert value(fams, "kvmctl_vm_audit_checks", vm="hud") == 9.0
    assert value(fams, "kvmctl_vm_hugepages_backed", vm="hud") == 1.0
    assert value(fams, "kvmctl_vm_hugepages_bytes", vm="hud") == 128 * 1024 * 1024
    assert value(fams, "kvmctl_vm_hugepages_planned_bytes", vm="hud") == 128 * 1024 * 1024
    assert value(fams, "kvmctl_vm_snapshots", vm="hud") == 3.0
    assert value(fams, "kvmctl_snapshot_duration_seconds", vm="hud") == 1.25
    assert value(fams, "kvmctl_migration_duration_seconds", vm="hud") == 4.5
    assert value(fams, "kvmctl_vm_cpu_seconds_total", vm="hud") == 7.0
    assert value(fams, "kvmctl_vm_vcpu_seconds_total", vm="hud", vcpu="0") == 3.0
    assert value(fams, "kvmctl_vm_vcpu_seconds_total", vm="hud", vcpu="1") == 1.25
    assert value(fams, "kvmctl_vm_vcpu_wait_seconds_total", vm="hud", vcpu="0") == 0.5
    assert value(fams, "kvmctl_vm_vcpu_wait_seconds_total", vm="hud", vcpu="1") == 0.0


def test_boot_deadline_met_missed_or_unknown() -> None:
    fams = families(
        Scrape(
            "s",
            [
                row("ok", ready_deadline_s=2.0, last_ready_s=1.5, deadline_met=True),
                row("late", ready_deadline_s=0.001, last_ready_s=4.6, deadline_met=False),
                row("new", ready_deadline_s=2.0),  # no boot recorded yet
                row("free", last_ready_s=3.0),  # no deadline
            ],
        )
    )
    assert value(fams, "kvmctl_vm_ready_deadline_met", vm="ok") == 1.0
    assert value(fams, "kvmctl_vm_ready_deadline_met", vm="late") == 0.0
    assert value(fams, "kvmctl_vm_ready_deadline_seconds", vm="late") == 0.001
    assert value(fams, "kvmctl_vm_last_ready_seconds", vm="late") == 4.6
    assert value(fams, "kvmctl_vm_ready_deadline_seconds", vm="new") == 2.0
    for name in ("kvmctl_vm_ready_deadline_met", "kvmctl_vm_last_ready_seconds"):
        assert value(fams, name, vm="new") is None, name
    assert value(fams, "kvmctl_vm_ready_deadline_seconds", vm="free") is None
    assert value(fams, "kvmctl_vm_ready_deadline_met", vm="free") is None
    assert value(fams, "kvmctl_vm_last_ready_seconds", vm="free") == 3.0


@pytest.mark.parametrize("state", [*STATES, "?"])
def test_state_is_one_hot(state: str) -> None:
    fams = families(Scrape("s", [row(state=state)]))
    got = {lab["state"]: v for lab, v in _state_samples(fams)}
    assert got[state] == 1.0
    assert sum(got.values()) == 1.0
    # Every known state is always there, so `== 0` alerts have a series to match.
    assert set(STATES) <= set(got)
    assert set(got) - set(STATES) <= {"?"}


def _state_samples(fams: list[Metric]) -> Iterator[tuple[dict[str, str], float]]:
    for fam in fams:
        for s in fam.samples:
            if s.name == "kvmctl_vm_state":
                yield s.labels, s.value


def test_shut_off_vm_has_no_runtime_values() -> None:
    fams = families(Scrape("s", [row(state="shut off")], checks={"hud": 1}, drift={"hud": 1}))
    for name in (
        "kvmctl_vm_ready",
        "kvmctl_vm_uptime_seconds",
        "kvmctl_vm_hugepages_backed",
        "kvmctl_vm_hugepages_bytes",
    ):
        assert value(fams, name, vm="hud") is None, name
    assert value(fams, "kvmctl_vm_hugepages_planned_bytes", vm="hud") == 128 * 1024 * 1024
    assert value(fams, "kvmctl_vm_state", vm="hud", state="shut off") == 1.0
    assert value(fams, "kvmctl_vm_drift_items", vm="hud") == 1.0  # audit: state not running


def test_not_ready_and_not_hugepage_backed_are_zero_not_missing() -> None:
    fams = families(Scrape("s", [row(ready=False, hugepages_actual_kib=0)]))
    assert value(fams, "kvmctl_vm_ready", vm="hud") == 0.0
    assert value(fams, "kvmctl_vm_hugepages_backed", vm="hud") == 0.0
    assert value(fams, "kvmctl_vm_hugepages_bytes", vm="hud") == 0.0


def test_unknown_values_are_left_out() -> None:
    # Running, but QEMU not found here: no backing, no uptime; no supervisor ever ran:
    # no restart count; no durations recorded; not audited.
    fams = families(
        Scrape("s", [row(hugepages_actual_kib=None, uptime_s=None, ready=None, restarts=None)])
    )
    for name in (
        "kvmctl_vm_hugepages_backed",
        "kvmctl_vm_uptime_seconds",
        "kvmctl_vm_ready",
        "kvmctl_vm_supervisor_restarts_total",
        "kvmctl_snapshot_duration_seconds",
        "kvmctl_migration_duration_seconds",
        "kvmctl_vm_drift_items",
        "kvmctl_vm_audit_checks",
        "kvmctl_vm_cpu_seconds_total",
    ):
        assert value(fams, name, vm="hud") is None, name
    assert value(fams, "kvmctl_supervisor_up") == 0.0


def test_zero_restarts_and_no_drift_are_reported() -> None:
    fams = families(Scrape("s", [row(restarts=0)], checks={"hud": 12}))
    assert value(fams, "kvmctl_vm_supervisor_restarts_total", vm="hud") == 0.0
    assert value(fams, "kvmctl_vm_drift_items", vm="hud") == 0.0


def test_migration_family_exists_before_any_migration() -> None:
    fams = families(Scrape("s", [row()]))
    (fam,) = [f for f in fams if f.name == "kvmctl_migration_duration_seconds"]
    assert fam.type == "gauge" and fam.samples == []


def test_several_vms_each_labelled() -> None:
    fams = families(Scrape("s", [row("hud"), row("ivi", state="paused", ready=False)]))
    assert {lab["vm"] for lab in names_of(fams, "kvmctl_vm_info")} == {"hud", "ivi"}
    assert value(fams, "kvmctl_vm_state", vm="ivi", state="paused") == 1.0
    assert value(fams, "kvmctl_vm_state", vm="hud", state="paused") == 0.0
    assert value(fams, "kvmctl_vm_ready", vm="ivi") == 0.0


def test_vcpu_times_skip_what_libvirt_left_out() -> None:
    st = {"vcpu.current": 3, "vcpu.0.time": 5, "vcpu.2.time": 7, "vcpu.2.delay": 1}
    assert list(vcpu_times(st)) == [(0, 5, None), (2, 7, 1)]
    assert list(vcpu_times({})) == []
    fams = families(Scrape("s", [row()], {"s-hud": st}))
    assert value(fams, "kvmctl_vm_vcpu_wait_seconds_total", vm="hud", vcpu="0") is None
    assert value(fams, "kvmctl_vm_vcpu_seconds_total", vm="hud", vcpu="1") is None
    assert value(fams, "kvmctl_vm_cpu_seconds_total", vm="hud") is None


def test_failed_scrape_says_down_only() -> None:
    fams = failed("s", 0.5)
    assert value(fams, "kvmctl_up") == 0.0
    assert value(fams, "kvmctl_scrape_duration_seconds") == 0.5
    assert {f.name for f in fams} == {
        "kvmctl_up",
        "kvmctl_scrape_duration_seconds",
        "kvmctl_supervisor_up",
    }


def test_family_names_unique_and_labelled() -> None:
    fams = families(Scrape("s", [row(restarts=1, last_snapshot_seconds=1.0)], STATS))
    names = [f.name for f in fams]
    assert len(names) == len(set(names))
    for fam in fams:
        assert fam.name.startswith("kvmctl_") and fam.documentation
        for s in fam.samples:
            assert s.labels["set"] == "s"
            if fam.name not in (
                "kvmctl_up",
                "kvmctl_scrape_duration_seconds",
                "kvmctl_supervisor_up",
            ):
                assert s.labels["vm"] == "hud"


class _Fixed:
    def __init__(self, fams: list[Metric]):
        self.fams = fams

    def collect(self) -> Iterator[Metric]:
        yield from self.fams


def exposition(fams: list[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(fams))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def test_text_format_round_trip() -> None:
    r = row(restarts=2, last_snapshot_seconds=0.75)
    fams = families(Scrape("s", [r, row("ivi", state="shut off")], STATS, {"hud": 0}, {"hud": 4}))
    parsed = {f.name: f for f in text_string_to_metric_families(exposition(fams))}
    assert set(parsed) == {f.name for f in fams}
    assert parsed["kvmctl_vm_vcpu_seconds"].type == "counter"
    assert parsed["kvmctl_vm_state"].type == "gauge"
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in parsed.values()
        for s in f.samples
    }
    assert got == samples(fams)


def test_every_family_is_documented() -> None:
    doc = DOCS.read_text()
    for exposed in _exposed():
        assert re.search(rf"`{exposed}(\{{|`)", doc), f"{exposed} missing from {DOCS.name}"


def _exposed() -> set[str]:
    fams = families(Scrape("s", [row(restarts=1)], STATS)) + failed("s", 0.0)
    return {f.name + ("_total" if f.type == "counter" else "") for f in fams}


def _exprs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from _exprs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _exprs(item)


def test_dashboard_uses_only_exposed_metrics() -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = list(_exprs(board))
    assert len(exprs) >= 15
    used = {name for e in exprs for name in re.findall(r"\bkvmctl_[a-z_]+", e)}
    assert used and used <= _exposed(), used - _exposed()
    # Every VM panel follows the $set/$vm pickers.
    for e in exprs:
        if "kvmctl_vm_" in e and "label_values" not in e:
            assert 'vm=~"$vm"' in e and 'set=~"$set"' in e, e
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


SUPERVISED = {
    "alive": True,
    "safe_state": {"degraded": True, "active": ["heartbeat_missed:hud"]},
    "vms": {
        "hud": {"heartbeat": {"age_s": 2.5, "missed": True, "misses": 3}},
        "ivi": {"restarts": 0},
    },
}


def test_heartbeat_and_degraded() -> None:
    fams = families(Scrape("s", [row()], supervisor=SUPERVISED))
    assert value(fams, "kvmctl_degraded") == 1.0
    assert value(fams, "kvmctl_vm_heartbeat_age_seconds", vm="hud") == 2.5
    assert value(fams, "kvmctl_vm_heartbeat_missed", vm="hud") == 1.0
    assert value(fams, "kvmctl_vm_heartbeat_misses_total", vm="hud") == 3.0
    assert value(fams, "kvmctl_vm_heartbeat_missed", vm="ivi") is None  # no heartbeat


def test_no_heartbeat_or_degraded_samples_without_a_running_supervisor() -> None:
    for supervisor in ({}, {**SUPERVISED, "alive": False}):
        fams = families(Scrape("s", [row()], supervisor=supervisor))
        assert value(fams, "kvmctl_degraded") is None
        assert value(fams, "kvmctl_vm_heartbeat_missed", vm="hud") is None


def test_degraded_while_a_gone_supervisor_left_its_measures_in_force() -> None:
    left = {
        "alive": False,
        "active": True,  # it never wrote its clean stop
        "safe_state": {"degraded": True, "paused": ["ivi"], "uncapped": {}},
        "vms": SUPERVISED["vms"],
    }
    fams = families(Scrape("s", [row()], supervisor=left))
    assert value(fams, "kvmctl_degraded") == 1.0
    assert value(fams, "kvmctl_vm_heartbeat_missed", vm="hud") is None  # nobody listens
    lifted = {"degraded": False, "paused": [], "uncapped": {}}
    stopped = {**left, "active": False, "safe_state": lifted}  # a clean stop lifts them
    assert value(families(Scrape("s", [row()], supervisor=stopped)), "kvmctl_degraded") is None
