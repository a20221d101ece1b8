"""Heartbeat and safe state against real libvirtd + QEMU: a safety VM beats
over its heartbeat channel; when it stops, `kvmctl supervise` pauses the
declared non-critical VM and marks the set degraded; when it beats again,
the VM runs again and the mark clears. A crash of the safety VM pauses
the shed VM too, until the safety VM is ready and beating again. The tests run in order on
one set and one supervisor process.

Set: `cluster` (safety, heartbeat) and `ivi` (shed by the safe state), both
test guests on shared CPUs, so the module can run beside others.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cockpit_helpers import kvmctl, kvmctl_json
from tests.integration.ops_helpers import (
    SupervisorProcess,
    applied_set,
    domain_state,
    fetch,
    free_port,
    kill_qemu,
    qemu_pid,
    start_exporter,
    tool,
    wait_until,
)

pytestmark = pytest.mark.integration

SET = f"kvt-hb-{secrets.token_hex(2)}"
CLUSTER, IVI = f"{SET}-cluster", f"{SET}-ivi"
PERIOD_MS = 250
# Generous for TCG guests on a busy 2-core host: a late beat is not the point here.
DEADLINE_S = 2.0
SPEC = f"""
name: {SET}
vms:
  cluster:
    criticality: safety
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 120s}}
    heartbeat: {{period: {PERIOD_MS}ms, deadline: {DEADLINE_S:g}s}}
  ivi:
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 120s}}
safe_state:
  shed: [ivi]
  heartbeat_missed: [pause]
  crashed: [pause]
"""


@pytest.fixture(scope="module")
def spec(tree_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("hb"), SET, SPEC) as path:
        yield path


@pytest.fixture(scope="module")
def sup(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorProcess]:
    state_dir = tmp_path_factory.mktemp("hb-state")
    proc = SupervisorProcess(spec, state_dir)
    try:
        proc.wait(30, event="observed", vm="ivi")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("KVMCTL_SUPERVISE_DIR", str(state_dir))  # where status reads it
            yield proc
    finally:
        proc.terminate()


def _state(sup: SupervisorProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sup.state_dir / f"{SET}.json").read_text())
    return data


def _metrics(spec: Path) -> dict[str, Any]:
    """One scrape of `kvmctl exporter` (it reads the supervisor's state file)."""
    listen = f"127.0.0.1:{free_port()}"
    proc = start_exporter(spec, listen)
    try:
        return fetch(f"http://{listen}/metrics", proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _sample(metrics: dict[str, Any], name: str, **labels: str) -> float | None:
    value: float | None = metrics.get(name, {}).get(frozenset({"set": SET, **labels}.items()))
    return value


def _beating(sup: SupervisorProcess) -> dict[str, Any] | None:
    beat: dict[str, Any] = _state(sup)["vms"]["cluster"].get("heartbeat") or {}
    return beat if beat.get("beats", 0) > 3 and not beat.get("missed") else None


def test_heartbeat_flowing_is_normal(sup: SupervisorProcess) -> None:
    started = tool(CLUSTER, "heartbeat", "start", str(PERIOD_MS))
    assert started.get("heartbeat") == "started", started
    beat = wait_until(lambda: _beating(sup), 60, "the cluster's heartbeat to reach the host")
    assert beat["connected"] is True and beat["deadline_s"] == DEADLINE_S
    time.sleep(3 * DEADLINE_S)  # a few deadlines pass with beats flowing
    state = _state(sup)
    assert state["safe_state"]["degraded"] is False, state["safe_state"]
    assert sup.count(event="heartbeat-missed") == 0
    assert domain_state(IVI) == "running"


def test_stopped_heartbeat_drives_the_safe_state(sup: SupervisorProcess, spec: Path) -> None:
    cluster_pid = qemu_pid(CLUSTER)
    mark = sup.mark()
    tool(CLUSTER, "heartbeat", "stop")
    stopped = time.time()
    missed = sup.wait(60, since=mark, event="heartbeat-missed", vm="cluster")
    entered = sup.wait(30, since=mark, event="safe-state", vm="cluster", on="heartbeat-missed")
    latency = entered["ts"] - stopped
    print(
        f"heartbeat miss detected {missed['age_s']:.3f} s after the last beat, safe state "
        f"{latency:.2f} s after the stop returned (deadline {DEADLINE_S} s)"
    )
    assert missed["age_s"] >= DEADLINE_S
    assert latency < DEADLINE_S + 30  # deadline plus slack for a loaded host
    assert entered["degraded"] is True and entered["active"] == ["heartbeat_missed:cluster"]
    assert entered["actions"] == [{"action": "pause", "vm": "ivi"}]
    wait_until(lambda: domain_state(IVI) == "paused", 30, "ivi to be paused")
    assert domain_state(CLUSTER) == "running" and qemu_pid(CLUSTER) == cluster_pid
    state = _state(sup)
    assert state["safe_state"]["degraded"] is True
    assert state["safe_state"]["applied"] == ["pause"]
    assert state["vms"]["cluster"]["heartbeat"]["missed"] is True
    status = kvmctl_json("status", str(spec))
    assert status["degraded"] is True
    row = next(r for r in status["vms"] if r["vm"] == "cluster")
    assert row["heartbeat_missed"] is True and row["heartbeat_age_s"] > DEADLINE_S
    text = kvmctl("status", str(spec))
    assert "DEGRADED: safe state in force (heartbeat_missed:cluster)" in text.stdout, text.stdout
    assert "heartbeat cluster: MISSED" in text.stdout
    metrics = _metrics(spec)
    assert _sample(metrics, "kvmctl_degraded") == 1.0
    assert _sample(metrics, "kvmctl_vm_heartbeat_missed", vm="cluster") == 1.0
    assert _sample(metrics, "kvmctl_vm_heartbeat_misses_total", vm="cluster") == 1.0
    age = _sample(metrics, "kvmctl_vm_heartbeat_age_seconds", vm="cluster")
    assert age is not None and age > DEADLINE_S


def test_resumed_heartbeat_returns_to_normal(sup: SupervisorProcess, spec: Path) -> None:
    mark = sup.mark()
    tool(CLUSTER, "heartbeat", "start", str(PERIOD_MS))
    sup.wait(60, since=mark, event="heartbeat-resumed", vm="cluster")
    left = sup.wait(30, since=mark, event="safe-state", vm="cluster", on="heartbeat-resumed")
    assert left["degraded"] is False and left["cleared"] == ["heartbeat_missed:cluster"]
    assert left["actions"] == [{"action": "resume", "vm": "ivi"}]
    wait_until(lambda: domain_state(IVI) == "running", 30, "ivi to run again")
    assert tool(IVI, "info")["name"]  # the guest answers again
    state = _state(sup)
    assert state["safe_state"]["degraded"] is False and state["safe_state"]["applied"] == []
    assert kvmctl_json("status", str(spec))["degraded"] is False
    metrics = _metrics(spec)
    assert _sample(metrics, "kvmctl_degraded") == 0.0
    assert _sample(metrics, "kvmctl_vm_heartbeat_missed", vm="cluster") == 0.0
    assert sup.count(mark, event="safe-state-step", done=True) == 1


def test_crashed_safety_vm_pauses_until_ready_and_beating_again(sup: SupervisorProcess) -> None:
    mark = sup.mark()
    kill_qemu(CLUSTER)
    entered = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="failed")
    assert entered["cause"] == "killed" and entered["entered"] == ["crashed:cluster"]
    wait_until(lambda: domain_state(IVI) == "paused", 30, "ivi to be paused")
    # The dead guest sends no beat either: the miss joins the crash.
    sup.wait(60, since=mark, event="safe-state", vm="cluster", on="heartbeat-missed")
    sup.wait(300, since=mark, event="restarted", vm="cluster")
    cleared = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="ready")
    assert cleared["cleared"] == ["crashed:cluster"] and cleared["degraded"] is True
    assert cleared["actions"] == []  # the missed heartbeat still holds ivi paused
    assert domain_state(IVI) == "paused"
    tool(CLUSTER, "heartbeat", "start", str(PERIOD_MS))
    left = sup.wait(60, since=mark, event="safe-state", vm="cluster", on="heartbeat-resumed")
    assert left["degraded"] is False and left["actions"] == [{"action": "resume", "vm": "ivi"}]
    wait_until(lambda: domain_state(IVI) == "running", 30, "ivi to run again")
    assert sup.count(mark, event="restarting", vm="ivi") == 0  # ivi itself was not restarted
