"""The example cockpit applied on real libvirt + QEMU: every promise checked
where it takes effect (thread affinity, scheduling, hugepages, cgroups)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cockpit_helpers import (
    cgroup_value,
    host_snapshot,
    kvmctl,
    kvmctl_json,
    qemu,
    renamed_example,
    write_spec,
)

pytestmark = [pytest.mark.integration, pytest.mark.dedicated_cpus]

TOKEN = secrets.token_hex(2)
SET = f"kvt-ck-{TOKEN}"
BRIDGES = (f"kvt{TOKEN}veh", f"kvt{TOKEN}med")
TEXT = renamed_example(SET, BRIDGES)


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec"), TEXT)


@pytest.fixture(scope="module")
def applied(example: Path) -> Iterator[dict[str, Any]]:
    before = host_snapshot(SET)
    result = kvmctl_json("apply", str(example))
    try:
        yield result
    finally:
        kvmctl("destroy", str(example))
        after = host_snapshot(SET)
        assert after["domains"] == [] and after["volumes"] == []
        assert after["links"] == before["links"] or not set(BRIDGES) & set(after["links"])


def test_every_vm_ready_and_cluster_before_hud(applied: dict[str, Any]) -> None:
    vms = applied["vms"]
    assert set(vms) == {"cluster", "hud", "ivi", "passenger"}
    assert all(v["action"] == "create" and v["ready_at"] for v in vms.values())
    # hud depends on cluster: it is started only once the cluster is ready.
    assert vms["cluster"]["ready_at"] <= vms["hud"]["started_at"]


def test_threads_pinned_as_planned(applied: dict[str, Any], example: Path) -> None:
    plan = kvmctl_json("plan", str(example))
    for vm in plan["vms"]:
        proc = qemu(vm["domain"])
        assert len(proc.vcpus) == len(vm["vcpus"])
        for thread in proc.vcpus:
            planned = {int(c) for c in vm["vcpus"][str(thread.index)].split(",")}
            assert thread.affinity == planned, (vm["vm"], thread.name)
        # Emulator threads (QEMU main loop and helpers) sit on the housekeeping CPU.
        assert proc.emulator and all(t.affinity == {0} for t in proc.emulator), vm["vm"]
    cluster = qemu(f"{SET}-cluster")
    assert cluster.vcpus[0].affinity == {1}


def test_cluster_is_real_time_and_hugepage_backed(applied: dict[str, Any]) -> None:
    cluster = qemu(f"{SET}-cluster")
    assert [(t.policy, t.priority) for t in cluster.vcpus] == [("fifo", 10)]
    assert cluster.hugetlb_kib == 256 * 1024
    hud = qemu(f"{SET}-hud")
    assert hud.hugetlb_kib == 256 * 1024 and hud.vcpus[0].policy == "other"
    assert qemu(f"{SET}-ivi").hugetlb_kib == 0


def test_cgroup_shares_and_quota_match_spec(applied: dict[str, Any]) -> None:
    assert cgroup_value(f"{SET}-hud", "cpu.shares", vcpu=False) == 2048
    assert cgroup_value(f"{SET}-ivi", "cpu.shares", vcpu=False) == 1024
    assert cgroup_value(f"{SET}-ivi", "cpu.cfs_quota_us") == 80_000
    assert cgroup_value(f"{SET}-passenger", "cpu.cfs_quota_us") == 50_000
    assert cgroup_value(f"{SET}-hud", "cpu.cfs_quota_us") == -1


def test_status_shows_no_drift(applied: dict[str, Any], example: Path) -> None:
    status = kvmctl_json("status", str(example))
    rows = {r["vm"]: r for r in status["vms"]}
    assert all(r["state"] == "running" and r["ready"] and r["drift"] == [] for r in rows.values())
    assert rows["cluster"]["vcpus_actual"] == ["1"]
    assert rows["cluster"]["hugepages_actual_kib"] == 256 * 1024


def test_reapply_changes_nothing(applied: dict[str, Any], example: Path) -> None:
    pids = {vm: qemu(f"{SET}-{vm}").pid for vm in applied["vms"]}
    again = kvmctl("apply", str(example))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert {vm: qemu(f"{SET}-{vm}").pid for vm in applied["vms"]} == pids


def test_changes_touch_only_what_changed(
    applied: dict[str, Any], example: Path, tmp_path: Path
) -> None:
    pids = {vm: qemu(f"{SET}-{vm}").pid for vm in applied["vms"]}
    text = TEXT

    # shares: applied live, nothing restarts
    shares = write_spec(
        tmp_path, text.replace("shares: 1024, limit: 80%", "shares: 1536, limit: 70%")
    )
    result = kvmctl_json("apply", str(shares))
    assert result["vms"]["ivi"]["action"] == "update-live"
    assert cgroup_value(f"{SET}-ivi", "cpu.shares", vcpu=False) == 1536
    assert cgroup_value(f"{SET}-ivi", "cpu.cfs_quota_us") == 70_000
    assert {vm: qemu(f"{SET}-{vm}").pid for vm in pids} == pids

    # vCPU count: only that VM restarts
    vcpus = write_spec(
        tmp_path,
        text.replace("    role: infotainment\n", "    role: infotainment\n    vcpus: 2\n"),
        "v.yaml",
    )
    result = kvmctl_json("apply", str(vcpus))
    assert {vm: r["action"] for vm, r in result["vms"].items()}["ivi"] == "restart"
    new_pids = {vm: qemu(f"{SET}-{vm}").pid for vm in pids}
    assert new_pids["ivi"] != pids["ivi"]
    assert {k: v for k, v in new_pids.items() if k != "ivi"} == {
        k: v for k, v in pids.items() if k != "ivi"
    }
    assert len(qemu(f"{SET}-ivi").vcpus) == 2

    # a removed VM is destroyed, with its volume (and ivi goes back to 1 vCPU)
    start = text.index("  passenger:\n")
    fewer = write_spec(tmp_path, text[:start], "f.yaml")
    result = kvmctl_json("apply", str(fewer))
    assert result["vms"]["passenger"]["action"] == "delete"
    assert result["vms"]["ivi"]["action"] == "restart"
    snap = host_snapshot(f"{SET}-passenger")
    assert snap["domains"] == [] and snap["volumes"] == []

    # and back to the example: the passenger comes back, the rest is left alone
    result = kvmctl_json("apply", str(example))
    assert {vm: r["action"] for vm, r in result["vms"].items()} == {
        "cluster": "unchanged",
        "hud": "unchanged",
        "ivi": "unchanged",
        "passenger": "create",
    }
