"""`kvmctl audit` on real guests: drift made behind kvmctl's back (virsh
vcpupin, schedinfo, a NIC taken off its bridge) is found where it takes
effect, and `kvmctl apply` repairs pins and shares live."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cockpit_helpers import (
    cgroup_value,
    kvmctl,
    kvmctl_json,
    qemu,
)
from tests.integration.ops_helpers import applied_set

pytestmark = [pytest.mark.integration, pytest.mark.dedicated_cpus]

TOKEN = secrets.token_hex(2)
SET = f"kvt-au-{TOKEN}"
BRIDGE = f"kvt{TOKEN}au"
SPEC = f"""
name: {SET}
networks:
  n: {{bridge: {BRIDGE}, subnet: 10.78.{int(TOKEN, 16) % 250}.0/24, isolated: true}}
vms:
  a:
    memory: {{size: 128MiB, hugepages: 2MiB}}
    disk: {{size: 32MiB}}
    cpu: {{shares: 700, limit: 60%}}
    networks: [n]
    ready: {{probe: agent, timeout: 90s}}
  b:
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: "serial:KVMCTL-READY b", timeout: 90s}}
"""


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("au"), SET, SPEC) as path:
        yield path


def audit(spec: Path) -> tuple[int, dict]:  # type: ignore[type-arg]
    run = kvmctl("audit", str(spec), "--json")
    return run.returncode, json.loads(run.stdout)


def test_freshly_applied_set_audits_clean(applied: Path) -> None:
    code, report = audit(applied)
    assert code == 0 and report["clean"] and report["drift"] == []
    items = {(c["vm"], c["item"]) for c in report["checks"]}
    assert {("a", "vcpu0 affinity"), ("a", "hugepages KiB"), ("a", "cpu.shares")} <= items
    assert any(vm == "a" and item.startswith("nic n ") for vm, item in items)
    hp = next(c for c in report["checks"] if c["item"] == "hugepages KiB" and c["vm"] == "a")
    assert hp["actual"] == str(128 * 1024)


def test_pin_and_shares_drift_is_flagged_then_repaired_live(applied: Path) -> None:
    dom_a, dom_b = f"{SET}-a", f"{SET}-b"
    pids = (qemu(dom_a).pid, qemu(dom_b).pid)
    subprocess.run(["virsh", "vcpupin", dom_a, "0", "0"], check=True, capture_output=True)
    subprocess.run(
        ["virsh", "schedinfo", dom_b, "--live", "cpu_shares=333"], check=True, capture_output=True
    )
    assert qemu(dom_a).vcpus[0].affinity == {0}

    code, report = audit(applied)
    assert code == 1 and not report["clean"]
    drifted = {(c["vm"], c["item"]): c for c in report["checks"] if not c["ok"]}
    assert set(drifted) == {("a", "vcpu0 affinity")}  # b has no shares in its plan
    assert (
        drifted["a", "vcpu0 affinity"]["planned"],
        drifted["a", "vcpu0 affinity"]["actual"],
    ) == (
        "1",
        "0",
    )
    table = kvmctl("audit", str(applied))
    assert table.returncode == 1 and "DRIFT" in table.stdout

    subprocess.run(
        ["virsh", "schedinfo", dom_a, "--live", "cpu_shares=1500"], check=True, capture_output=True
    )
    code, report = audit(applied)
    assert code == 1
    assert {c["item"] for c in report["checks"] if not c["ok"]} == {"vcpu0 affinity", "cpu.shares"}

    result = kvmctl_json("apply", str(applied))
    assert result["vms"]["a"]["action"] == "update-live"
    assert result["vms"]["b"]["action"] == "unchanged"
    # Repaired where it takes effect, without a restart.
    assert qemu(dom_a).vcpus[0].affinity == {1}
    assert cgroup_value(dom_a, "cpu.shares", vcpu=False) == 700
    assert (qemu(dom_a).pid, qemu(dom_b).pid) == pids
    code, report = audit(applied)
    assert code == 0 and report["clean"], report["drift"]


def test_nic_off_its_bridge_is_flagged(applied: Path) -> None:
    plan = kvmctl_json("plan", str(applied))
    vm_a = next(v for v in plan["vms"] if v["vm"] == "a")
    domain_xml = subprocess.run(
        ["virsh", "domiflist", vm_a["domain"]], check=True, capture_output=True, text=True
    ).stdout
    dev = next(line.split()[0] for line in domain_xml.splitlines() if BRIDGE in line)
    subprocess.run(["ip", "link", "set", dev, "nomaster"], check=True)
    try:
        code, report = audit(applied)
        assert code == 1
        nic = next(c for c in report["checks"] if c["item"].startswith("nic n "))
        assert (nic["planned"], nic["actual"], nic["ok"]) == (BRIDGE, "-", False)
    finally:
        subprocess.run(["ip", "link", "set", dev, "master", BRIDGE], check=True)
    assert audit(applied)[0] == 0


RT_SET = f"kvt-ar-{TOKEN}"
RT_SPEC = f"""
name: {RT_SET}
vms:
  c:
    criticality: safety
    cpu: {{placement: dedicated, realtime: {{policy: fifo, priority: 10}}}}
    memory: {{size: 128MiB}}
    image: {{builtin: test-guest-rt}}
    disk: {{size: 16MiB}}
    ready: {{probe: agent, timeout: 90s}}
"""


def test_lost_real_time_is_flagged_then_set_again_live(tmp_path: Path) -> None:
    """A vCPU thread taken off SCHED_FIFO (as a migration leaves it, or a chrt)
    is drift; `kvmctl apply` makes it real-time again in the running QEMU."""
    with applied_set(tmp_path, RT_SET, RT_SPEC) as spec:
        dom = f"{RT_SET}-c"
        before = qemu(dom)
        assert [t.policy for t in before.vcpus] == ["fifo"]
        tid = before.vcpus[0].tid
        subprocess.run(["chrt", "-o", "-p", "0", str(tid)], check=True, capture_output=True)
        assert qemu(dom).vcpus[0].policy == "other"

        code, report = audit(spec)
        assert code == 1
        drifted = [(c["item"], c["planned"], c["actual"]) for c in report["checks"] if not c["ok"]]
        assert drifted == [("vcpu0 sched", "fifo:10", "other")]

        result = kvmctl_json("apply", str(spec))
        assert result["vms"]["c"]["action"] == "update-live"
        after = qemu(dom)
        assert after.pid == before.pid  # not restarted
        assert [(t.policy, t.priority) for t in after.vcpus] == [("fifo", 10)]
        assert audit(spec)[0] == 0
