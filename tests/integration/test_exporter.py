"""`kvmctl exporter` on a real two-VM cockpit: what /metrics says matches
`kvmctl status --json` and `kvmctl audit --json`, vCPU time comes from
libvirt and grows, SIGTERM ends it with status 0; a bad --listen starts nothing.

One VM is hugepage-backed, one is not; one has a snapshot (its duration
recorded by `kvmctl snapshot create`), then is paused; a supervisor state
file gives the other two restarts, and a recorded migration duration shows
how `kvmctl migrate` will feed kvmctl_migration_duration_seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.observe.metrics import STATES
from kvmctl.state import history
from tests.integration.cockpit_helpers import URI, cluster_and_ivi, kvmctl, kvmctl_json
from tests.integration.ops_helpers import applied_set, fetch, free_port, start_exporter, tool

pytestmark = pytest.mark.integration

SET = f"kvt-ex-{secrets.token_hex(2)}"
SPEC = cluster_and_ivi(SET)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Private supervisor-state and history directories for every kvmctl run here."""
    base = tmp_path_factory.mktemp("ex")
    extra = {
        "KVMCTL_SUPERVISE_DIR": str(base / "supervise"),
        "KVMCTL_HISTORY_DIR": str(base / "history"),
    }
    (base / "supervise").mkdir()
    old = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # kvmctl() passes os.environ on
    try:
        yield extra
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def spec(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("exspec"), SET, SPEC) as path:
        yield path
    assert not history.history_path(SET).exists()  # destroy forgot the durations


def get(m: dict[str, Any], name: str, **labels: str) -> float | None:
    value: float | None = m.get(name, {}).get(frozenset({"set": SET, **labels}.items()))
    return value


@pytest.fixture(scope="module")
def prepared(spec: Path, env: dict[str, str]) -> Path:
    """A snapshot of the IVI (then paused), restarts in the supervisor state, a
    migration duration recorded for the cluster."""
    snap = kvmctl("snapshot", "create", str(spec), "ivi", "s1", timeout=240)
    assert snap.returncode == 0, snap.stderr
    (Path(env["KVMCTL_SUPERVISE_DIR"]) / f"{SET}.json").write_text(
        json.dumps(
            {
                "set": SET,
                "pid": 1,
                "active": False,
                "vms": {"cluster": {"restarts": 2, "resets": 1}, "ivi": {"restarts": 0}},
            }
        )
    )
    assert history.record(SET, "migration", {"cluster": 1.5}, name="qemu+ssh://soc-b/system")
    conn = libvirt.open(URI)
    try:
        conn.lookupByName(f"{SET}-ivi").suspend()
    finally:
        conn.close()
    return spec


def test_metrics_match_status(prepared: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    proc = start_exporter(prepared, f"127.0.0.1:{port}")
    try:
        m = fetch(url, proc)
        status = {r["vm"]: r for r in kvmctl_json("status", str(prepared))["vms"]}
        audit = kvmctl("audit", str(prepared), "--json")
        # An idle TCG vCPU may sleep through seconds without a tick of CPU
        # time: give the cluster work, so its vCPU time must grow.
        tool(f"{SET}-cluster", "cpuloop", "2")
        m2 = fetch(url, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
    assert rc == 0, err
    assert "Traceback" not in err
    # It no longer listens.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0

    assert get(m, "kvmctl_up") == 1.0
    assert get(m, "kvmctl_supervisor_up") == 0.0  # the state file's supervisor is not alive
    assert status["cluster"]["state"] == "running" and status["ivi"]["state"] == "paused"
    for vm, st in status.items():
        assert get(m, "kvmctl_vm_info", vm=vm, domain=st["domain"]) == 1.0
        states = {s: get(m, "kvmctl_vm_state", vm=vm, state=s) for s in STATES}
        assert states == {s: float(s == st["state"]) for s in STATES}, (vm, states)
        assert get(m, "kvmctl_vm_ready", vm=vm) == float(st["ready"]), vm
        assert get(m, "kvmctl_vm_supervisor_restarts_total", vm=vm) == st["restarts"], vm
        huge = st["hugepages_actual_kib"]
        assert get(m, "kvmctl_vm_hugepages_backed", vm=vm) == float(huge > 0), vm
        assert get(m, "kvmctl_vm_hugepages_bytes", vm=vm) == huge * 1024, vm
        assert get(m, "kvmctl_vm_hugepages_planned_bytes", vm=vm) == (
            st["hugepages_planned_kib"] * 1024
        )
        assert get(m, "kvmctl_vm_snapshots", vm=vm) == st["snapshots"]
        assert get(m, "kvmctl_snapshot_duration_seconds", vm=vm) == st["last_snapshot_seconds"]
        assert get(m, "kvmctl_migration_duration_seconds", vm=vm) == st["last_migration_seconds"]
    # The values themselves, not only their agreement.
    assert status["cluster"]["ready"] is True and status["cluster"]["restarts"] == 2
    assert status["cluster"]["hugepages_actual_kib"] == 128 * 1024
    assert get(m, "kvmctl_vm_hugepages_backed", vm="ivi") == 0.0
    assert status["ivi"]["snapshots"] == 1 and status["ivi"]["last_snapshot_seconds"] > 0
    assert status["cluster"]["last_migration_seconds"] == 1.5
    assert get(m, "kvmctl_snapshot_duration_seconds", vm="cluster") is None

    # Drift: what `kvmctl audit` finds (the paused IVI is not "running", so it exits 1).
    assert audit.returncode == 1, audit.stderr
    checks = json.loads(audit.stdout)["checks"]
    for vm in status:
        want = sum(1 for c in checks if c["vm"] == vm and not c["ok"])
        total = sum(1 for c in checks if c["vm"] == vm)
        assert get(m, "kvmctl_vm_drift_items", vm=vm) == want, vm
        assert get(m, "kvmctl_vm_audit_checks", vm=vm) == total, vm
    assert get(m, "kvmctl_vm_drift_items", vm="ivi") == 1.0
    assert get(m, "kvmctl_vm_drift_items", vm="cluster") == 0.0

    # vCPU time from libvirt: one vCPU each, grows while the cluster runs.
    for vm in status:
        vcpus = {
            dict(k)["vcpu"]: v
            for k, v in m["kvmctl_vm_vcpu_seconds_total"].items()
            if dict(k)["vm"] == vm
        }
        assert list(vcpus) == ["0"] and vcpus["0"] > 0, (vm, vcpus)
    first = get(m, "kvmctl_vm_vcpu_seconds_total", vm="cluster", vcpu="0")
    later = get(m2, "kvmctl_vm_vcpu_seconds_total", vm="cluster", vcpu="0")
    assert first is not None and later is not None and later > first
    # The paused IVI's vCPU stands still.
    assert get(m2, "kvmctl_vm_vcpu_seconds_total", vm="ivi", vcpu="0") == get(
        m, "kvmctl_vm_vcpu_seconds_total", vm="ivi", vcpu="0"
    )


def test_bad_listen_starts_nothing(spec: Path) -> None:
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:http", "::1:9477"):
        run = kvmctl("exporter", str(spec), "--listen", bad, timeout=60)
        assert run.returncode == 2, (bad, run.stderr)
        assert run.stderr.count("\n") == 1 and "--listen" in run.stderr, run.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = kvmctl("exporter", str(spec), "--listen", f"127.0.0.1:{port}", timeout=120)
        assert run.returncode == 3, run.stderr
        assert "in use" in run.stderr and str(port) in run.stderr
        assert "serving" not in run.stderr
