"""The safe state's other actions and triggers against real libvirtd + QEMU:
a missed heartbeat caps the shed VM (its vCPU cgroup quota) and restarts the
safety VM; a spent restart budget pauses the shed VM; a shed VM restarted in
the safe state comes back paused and capped; a supervisor killed while the
safe state is in force leaves its measures, and the next one takes them over
and lifts them once the set is normal. The tests run in order on one set.

Set: `cluster` (safety, heartbeat, one restart per 10 min) and `ivi` (shed),
both test guests on shared CPUs, so the module can run beside others.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cockpit_helpers import cgroup_value, kvmctl, kvmctl_json
from tests.integration.ops_helpers import (
    SupervisorProcess,
    applied_set,
    domain_state,
    kill_qemu,
    qemu_pid,
    tool,
    wait_until,
)

pytestmark = pytest.mark.integration

SET = f"kvt-ss-{secrets.token_hex(2)}"
CLUSTER, IVI = f"{SET}-cluster", f"{SET}-ivi"
PERIOD_MS = 250
DEADLINE_S = 2.0
CAP_PCT = 20
SPEC = f"""
name: {SET}
vms:
  cluster:
    criticality: safety
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 120s}}
    heartbeat: {{period: {PERIOD_MS}ms, deadline: {DEADLINE_S:g}s}}
    restart: {{policy: on-failure, max: 1, window: 10m}}
  ivi:
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 120s}}
safe_state:
  shed: [ivi]
  cap: {CAP_PCT}%
  heartbeat_missed: [cap, restart]
  gave_up: [pause]
"""
CAPPED_QUOTA = 100_000 * CAP_PCT // 100  # of libvirt's default 100 ms period


@pytest.fixture(scope="module")
def spec(tree_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("ss"), SET, SPEC) as path:
        yield path


@pytest.fixture(scope="module")
def state_dir(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("ss-state")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KVMCTL_SUPERVISE_DIR", str(directory))  # where status reads it
        yield directory


class Supervisors:
    """The supervisor of the moment: the tests kill one and start the next."""

    def __init__(self, spec: Path, state_dir: Path):
        self.spec = spec
        self.state_dir = state_dir
        self.current = self.start()

    def start(self) -> SupervisorProcess:
        self.current = SupervisorProcess(self.spec, self.state_dir)
        self.current.wait(30, event="observed", vm="ivi")
        return self.current


@pytest.fixture(scope="module")
def sups(spec: Path, state_dir: Path) -> Iterator[Supervisors]:
    s = Supervisors(spec, state_dir)
    try:
        yield s
    finally:
        s.current.terminate()


def _quota(domain: str) -> int:
    return cgroup_value(domain, "cpu.cfs_quota_us")


def _safe(state_dir: Path) -> dict[str, Any]:
    safe: dict[str, Any] = json.loads((state_dir / f"{SET}.json").read_text())["safe_state"]
    return safe


def _beat() -> None:
    """Start the cluster's heartbeat in the guest."""
    assert tool(CLUSTER, "heartbeat", "start", str(PERIOD_MS)).get("heartbeat") == "started"


def test_missed_heartbeat_caps_the_shed_vm_and_restarts_the_safety_vm(
    sups: Supervisors, state_dir: Path
) -> None:
    sup = sups.current
    assert _quota(IVI) == -1  # no cpu.limit of its own
    mark = sup.mark()
    _beat()
    wait_until(
        lambda: (_safe_beats(state_dir) or 0) > 3, 60, "the cluster's heartbeat to reach the host"
    )
    cluster_pid = qemu_pid(CLUSTER)
    tool(CLUSTER, "heartbeat", "stop")
    stopped = time.time()
    entered = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="heartbeat-missed")
    print(f"safe state {entered['ts'] - stopped:.2f} s after the heartbeat stopped")
    assert entered["actions"] == [
        {"action": "cap", "vm": "ivi", "limit_pct": CAP_PCT},
        {"action": "restart", "vm": "cluster"},
    ]
    wait_until(lambda: _quota(IVI) == CAPPED_QUOTA, 30, "ivi's vCPU quota to be capped")
    assert domain_state(IVI) == "running"
    sup.wait(300, since=mark, event="restarted", vm="cluster")
    assert qemu_pid(CLUSTER) not in (None, cluster_pid)
    # The restarted guest does not beat yet: the miss, and the cap, hold.
    assert _safe(state_dir)["active"] == ["heartbeat_missed:cluster"]
    assert _quota(IVI) == CAPPED_QUOTA


def _safe_beats(state_dir: Path) -> int | None:
    vms = json.loads((state_dir / f"{SET}.json").read_text())["vms"]
    beats: int | None = (vms["cluster"].get("heartbeat") or {}).get("beats")
    return beats


def test_spent_restart_budget_pauses_the_shed_vm(sups: Supervisors) -> None:
    sup = sups.current
    mark = sup.mark()
    kill_qemu(CLUSTER)
    gave_up = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="gave-up")
    assert gave_up["entered"] == ["gave_up:cluster"]
    assert gave_up["actions"] == [{"action": "pause", "vm": "ivi"}]
    wait_until(lambda: domain_state(IVI) == "paused", 30, "ivi to be paused")
    assert _quota(IVI) == CAPPED_QUOTA  # the missed heartbeat's cap holds too
    assert domain_state(CLUSTER) == "shut off"
    assert sup.count(mark, event="restarting", vm="cluster") == 0


def test_shed_vm_restarted_in_the_safe_state_comes_back_paused_and_capped(
    sups: Supervisors,
) -> None:
    sup = sups.current
    mark = sup.mark()
    ivi_pid = kill_qemu(IVI)
    sup.wait(300, since=mark, event="restarted", vm="ivi")
    wait_until(lambda: domain_state(IVI) == "paused", 60, "the restarted ivi to be paused")
    assert qemu_pid(IVI) not in (None, ivi_pid)
    assert _quota(IVI) == CAPPED_QUOTA
    steps = {(e["action"], e["done"]) for e in sup.since(mark) if e["event"] == "safe-state-step"}
    assert steps == {("cap", True), ("pause", True)}


def test_killed_supervisor_leaves_the_measures_and_the_next_lifts_them(
    sups: Supervisors, spec: Path, state_dir: Path
) -> None:
    sups.current.proc.kill()  # SIGKILL by pid: no chance to lift anything
    sups.current.terminate()
    assert domain_state(IVI) == "paused" and _quota(IVI) == CAPPED_QUOTA
    status = kvmctl_json("status", str(spec))
    assert status["degraded"] is True and status["safe_state"]["left_in_force"] is True
    text = kvmctl("status", str(spec)).stdout
    assert "left in force by a supervisor that is gone (ivi paused, ivi capped)" in text, text

    sup = sups.start()
    adopted = sup.wait(30, event="safe-state-adopted")
    assert adopted["active"] == ["gave_up:cluster", "heartbeat_missed:cluster"]
    # The new supervisor's restart budget is fresh: it restarts the killed
    # cluster, whose readiness clears the spent budget and lifts the pause.
    ready = sup.wait(300, event="safe-state", vm="cluster", on="ready")
    assert ready["cleared"] == ["gave_up:cluster"]
    assert ready["actions"] == [{"action": "resume", "vm": "ivi"}]
    wait_until(lambda: domain_state(IVI) == "running", 30, "ivi to run again")
    assert _quota(IVI) == CAPPED_QUOTA  # the heartbeat is still missed
    mark = sup.mark()
    _beat()
    left = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="heartbeat-resumed")
    assert left["degraded"] is False and left["actions"] == [{"action": "uncap", "vm": "ivi"}]
    wait_until(lambda: _quota(IVI) == -1, 30, "ivi's quota to be what it was")
    assert _safe(state_dir)["paused"] == [] and _safe(state_dir)["uncapped"] == {}
    assert kvmctl_json("status", str(spec))["degraded"] is False
