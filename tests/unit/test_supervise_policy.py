"""The supervisor's restart rules as tables: policy x cause, budget, backoff."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvmctl.state.supervisor import supervisor_state
from kvmctl.supervise.policy import (
    FAILURES,
    RestartPolicy,
    backoff_delay,
    decide,
    recent_restarts,
    stop_cause,
    waiting_on,
)

pytestmark = pytest.mark.unit

NOW = 1000.0


@pytest.mark.parametrize(
    ("policy", "cause", "in_place", "kind"),
    [
        # a killed QEMU or a crash: restarted unless never
        ("always", "killed", False, "restart"),
        ("on-failure", "killed", False, "restart"),
        ("never", "killed", False, "ignore"),
        ("on-failure", "crashed", False, "restart"),
        ("on-failure", "vanished", False, "restart"),
        ("on-failure", "start-failed", False, "restart"),
        ("on-failure", "not-ready", False, "restart"),
        # silent past its heartbeat deadline (safe_state heartbeat_missed: restart)
        ("on-failure", "heartbeat", False, "restart"),
        ("never", "heartbeat", False, "ignore"),
        # a clean shutdown: only always brings it back
        ("always", "shutdown", False, "restart"),
        ("on-failure", "shutdown", False, "ignore"),
        ("never", "shutdown", False, "ignore"),
        # an operator's stop is never undone
        ("always", "destroyed", False, "ignore"),
        ("on-failure", "destroyed", False, "ignore"),
        ("always", "migrated", False, "ignore"),
        ("always", "saved", False, "ignore"),
        # reset in place by the hypervisor: wait for readiness
        ("always", "watchdog", True, "recover"),
        ("on-failure", "panicked", True, "recover"),
        ("never", "watchdog", True, "recover"),
        ("never", "reboot", True, "recover"),
        ("on-failure", "reboot", True, "recover"),
        # a watchdog that powered the VM off is a failure that stopped it
        ("on-failure", "watchdog", False, "restart"),
        ("always", "something-new", False, "ignore"),
    ],
)
def test_policy_table(policy: str, cause: str, in_place: bool, kind: str) -> None:
    d = decide(RestartPolicy(policy, max=3, window=60), cause, [], NOW, in_place=in_place)  # type: ignore[arg-type]
    assert d.kind == kind, d.reason


def test_only_failures_and_restarts_count_against_the_budget() -> None:
    p = RestartPolicy("always", max=3, window=60)
    assert decide(p, "killed", [], NOW).counts
    assert decide(p, "watchdog", [], NOW, in_place=True).counts
    assert not decide(p, "reboot", [], NOW, in_place=True).counts
    assert not decide(p, "destroyed", [], NOW).counts


def test_gives_up_after_max_restarts_in_window() -> None:
    p = RestartPolicy("always", max=2, window=60)
    assert decide(p, "killed", [NOW - 10], NOW).kind == "restart"
    d = decide(p, "killed", [NOW - 10, NOW - 5], NOW)
    assert d.kind == "give-up" and "max 2" in d.reason and d.recent == 2
    # in place too: a VM the watchdog keeps resetting is given up
    assert decide(p, "watchdog", [NOW - 10, NOW - 5], NOW, in_place=True).kind == "give-up"


def test_old_restarts_fall_out_of_the_window() -> None:
    p = RestartPolicy("on-failure", max=2, window=60)
    assert decide(p, "killed", [NOW - 61, NOW - 60.5], NOW).kind == "restart"
    assert decide(p, "killed", [NOW - 61, NOW - 59], NOW).recent == 1


def test_max_zero_never_restarts() -> None:
    assert decide(RestartPolicy("always", max=0), "killed", [], NOW).kind == "give-up"


@pytest.mark.parametrize(
    ("recent", "delay"), [(0, 0.0), (1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)]
)
def test_backoff_doubles_up_to_the_cap(recent: int, delay: float) -> None:
    assert backoff_delay(recent, base=2.0, cap=10.0) == delay


def test_restart_decision_carries_the_backoff() -> None:
    p = RestartPolicy("always", max=5, window=60, backoff=1.5, backoff_max=30)
    delays = [decide(p, "killed", [NOW - 1] * n, NOW).delay for n in range(5)]
    assert delays == [0.0, 1.5, 3.0, 6.0, 12.0]


def test_recent_restarts() -> None:
    assert recent_restarts([1.0, 50.0, 99.0], window=60, now=100.0) == 2
    assert recent_restarts([], window=60, now=100.0) == 0


@pytest.mark.parametrize(
    ("detail", "cause"),
    [
        ("failed", "killed"),
        ("crashed", "crashed"),
        ("shutdown", "shutdown"),
        ("destroyed", "destroyed"),
        ("unknown", "vanished"),
        ("daemon", "vanished"),
        ("migrated", "migrated"),
    ],
)
def test_stop_cause(detail: str, cause: str) -> None:
    assert stop_cause(detail) == cause


def test_unknown_shutoff_reasons_are_failures() -> None:
    # A VM found shut off with no known reason after libvirtd restarted died meanwhile.
    assert stop_cause("unknown") in FAILURES


def test_waiting_on_dependencies() -> None:
    assert waiting_on(["a", "b"], {"a": True, "b": False}) == ["b"]
    assert waiting_on(["a"], {"a": True}) == []
    assert waiting_on(["x"], {}) == ["x"]
    assert waiting_on([], {}) == []


def test_decision_as_dict() -> None:
    d = decide(RestartPolicy("always", max=3, window=60), "killed", [NOW - 1], NOW)
    assert d.as_dict() == {
        "action": "restart",
        "reason": "killed: restart 2 of at most 3 within 60 s",
        "delay_s": 1.0,
        "restarts_in_window": 1,
    }


def test_supervisor_state_reads_back_and_knows_a_dead_supervisor(tmp_path: Path) -> None:
    assert supervisor_state("nope", tmp_path) is None
    data = {"set": "s", "pid": os.getpid(), "active": True, "started_at": time.time(), "vms": {}}
    (tmp_path / "s.json").write_text(json.dumps(data))
    state = supervisor_state("s", tmp_path)
    assert state is not None and state["alive"] is True and state["vms"] == {}
    data["active"] = False
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert supervisor_state("s", tmp_path)["alive"] is False  # type: ignore[index]
    # a pid that does not exist (or was reused by a later process)
    data.update(active=True, pid=2**22 + 12345)
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert supervisor_state("s", tmp_path)["alive"] is False  # type: ignore[index]
    (tmp_path / "s.json").write_text("{not json")
    assert supervisor_state("s", tmp_path) is None


def test_supervisor_state_honours_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVMCTL_SUPERVISE_DIR", str(tmp_path))
    (tmp_path / "e.json").write_text(json.dumps({"set": "e", "pid": 1, "active": False}))
    state = supervisor_state("e")
    assert state is not None and state["set"] == "e" and state["alive"] is False
