"""Emulator-thread protection on real guests: the safety VM's domain weight and
its emulator threads' CPU read where they take effect (the cgroup file, the
threads' affinity in /proc), after apply, after drift is repaired, and after
the supervisor restarts the VM."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmctl.planner.protection import PROTECTED_SHARES
from tests.integration.cockpit_helpers import (
    cgroup_value,
    kvmctl,
    kvmctl_json,
    qemu,
)
from tests.integration.conftest import token
from tests.integration.ops_helpers import SupervisorProcess, applied_set, kill_qemu

pytestmark = [pytest.mark.integration, pytest.mark.dedicated_cpus]

SET = f"kvt-pr-{token(2)}"
SPEC = f"""
name: {SET}
host: {{housekeeping_cpus: [0]}}
vms:
  cluster:
    criticality: safety
    cpu: {{placement: dedicated}}
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
    restart: {{policy: always, max: 3, window: 300s}}
  ivi:
    cpu: {{placement: shared, shares: 1024, limit: 50%}}
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: "serial:KVMCTL-READY ivi", timeout: 90s}}
"""
CLUSTER, IVI = f"{SET}-cluster", f"{SET}-ivi"


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("pr"), SET, SPEC) as path:
        yield path


def protected_in_force(spec: Path) -> None:
    """The cluster's weight in its domain cgroup, its emulator threads on the
    housekeeping CPU and its vCPU on its own, as the plan places them."""
    row = next(v for v in kvmctl_json("plan", str(spec), "--json")["vms"] if v["vm"] == "cluster")
    proc = qemu(CLUSTER)
    assert cgroup_value(CLUSTER, "cpu.shares", vcpu=False) == PROTECTED_SHARES
    assert row["emulator"] == "0"  # host.housekeeping_cpus
    assert proc.emulator and all(t.affinity == {0} for t in proc.emulator)
    dedicated = {int(row["vcpus"]["0"])}
    assert dedicated != {0} and all(t.affinity == dedicated for t in proc.vcpus)


def test_safety_vm_is_protected_and_the_shared_vm_is_not(applied: Path) -> None:
    protected_in_force(applied)
    assert cgroup_value(IVI, "cpu.shares", vcpu=False) == 1024
    plan = kvmctl("plan", str(applied))
    assert plan.returncode == 0, plan.stderr
    assert "VM 'cluster': emulator and I/O threads protected on CPU(s) 0" in plan.stdout
    report = kvmctl_json("audit", str(applied), "--json")
    shares = next(c for c in report["checks"] if c["vm"] == "cluster" and c["item"] == "cpu.shares")
    assert shares["ok"] and shares["actual"] == str(PROTECTED_SHARES)


def test_lost_protection_is_drift_that_apply_repairs(applied: Path) -> None:
    pid = qemu(CLUSTER).pid
    subprocess.run(
        ["virsh", "schedinfo", CLUSTER, "--live", "cpu_shares=1024"],
        check=True,
        capture_output=True,
    )
    assert cgroup_value(CLUSTER, "cpu.shares", vcpu=False) == 1024
    planned = kvmctl_json("plan", str(applied), "--json")
    action = next(a for a in planned["actions"] if a["vm"] == "cluster")
    assert action["kind"] == "update-live"
    assert "drift: cpu.shares 1024 (planned 262144)" in action["reasons"]
    result = kvmctl("apply", str(applied))
    assert result.returncode == 0, result.stderr
    assert qemu(CLUSTER).pid == pid  # repaired live, same QEMU
    protected_in_force(applied)


def test_protection_comes_back_with_a_supervisor_restart(applied: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="kvt-pr-") as state:
        sup = SupervisorProcess(applied, Path(state), "--backoff", "1s")
        try:
            sup.wait(60, event="observed", vm="cluster")
            mark = sup.mark()
            old = kill_qemu(CLUSTER)
            restarted = sup.wait(120, since=mark, event="restarted", vm="cluster")
            assert restarted["pid"] not in (None, old)
            protected_in_force(applied)
        finally:
            sup.terminate()


def test_protection_off_gives_the_default_weight_back_live(applied: Path) -> None:
    """Last here: the spec with protect_emulator: false is a live change that
    puts the domain's weight back to the kernel's default, same QEMU."""
    pid = qemu(CLUSTER).pid
    off = applied.with_name("off.yaml")
    off.write_text(
        SPEC.replace(
            "cpu: {placement: dedicated}", "cpu: {placement: dedicated, protect_emulator: false}"
        )
    )
    result = kvmctl("apply", str(off))
    assert result.returncode == 0, result.stderr
    assert qemu(CLUSTER).pid == pid
    assert cgroup_value(CLUSTER, "cpu.shares", vcpu=False) == 1024
