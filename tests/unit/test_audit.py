"""Audit rules on hand-made observations, and the planner's drift repair."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from kvmctl.cockpit.audit import audit_plan
from kvmctl.host.observe import observe
from kvmctl.planner.drift import compare, drift
from kvmctl.planner.live import LiveDomain, LiveState, Observation, ThreadObs
from kvmctl.planner.plan import make_plan
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

SPEC = spec(
    """
        name: au
        networks:
          veh: {bridge: br-veh, subnet: 10.1.0.0/24}
        vms:
          cluster:
            cpu: {placement: dedicated, realtime: {policy: fifo, priority: 10}}
            memory: {size: 256MiB, hugepages: 2MiB}
            networks: [veh]
          ivi:
            cpu: {shares: 1024, limit: 80%}
            memory: {size: 128MiB}
        """
)
FACTS = facts(cpus=4)
PLAN = make_plan(SPEC, FACTS)
CLUSTER, IVI = PLAN.vms["cluster"], PLAN.vms["ivi"]


def good(plan=CLUSTER) -> Observation:  # type: ignore[no-untyped-def]
    """What a correctly applied VM looks like."""
    rt = plan.realtime
    vcpus = tuple(
        ThreadObs(cpus, rt.policy if rt else "other", rt.priority if rt else 0)
        for cpus in plan.placement.vcpu_pins
    )
    return Observation(
        state="running",
        pid=4242,
        vcpus=vcpus,
        vcpu_quota_us=tuple(plan.quota_us or -1 for _ in vcpus),
        emulator=(ThreadObs(plan.placement.emulator), ThreadObs(plan.placement.emulator)),
        iothreads=(ThreadObs(plan.placement.iothread),),
        hugetlb_kib=plan.vm.memory.size // 1024 if plan.vm.memory.hugepages else 0,
        shares=plan.shares,
        nic_bridges={n.tap: n.bridge for n in plan.nics},
    )


def items(checks) -> set[str]:  # type: ignore[no-untyped-def]
    return {c.item for c in drift(checks)}


def test_a_correct_vm_has_no_drift() -> None:
    for plan in (CLUSTER, IVI):
        checks = compare(plan, good(plan))
        assert drift(checks) == [], drift(checks)
        assert {"vcpu0 affinity", "vcpu0 sched", "emulator affinity", "hugepages KiB"} <= {
            c.item for c in checks
        }
    assert any(c.item.startswith("nic veh") for c in compare(CLUSTER, good()))
    assert any(c.item == "cpu.shares" for c in compare(IVI, good(IVI)))


def test_every_kind_of_drift_is_named() -> None:
    obs = good()
    wrong = replace(
        obs,
        vcpus=(ThreadObs(frozenset({0}), "other", 0),),
        emulator=(ThreadObs(frozenset({0})), ThreadObs(frozenset({0, 1}))),
        iothreads=(ThreadObs(frozenset({3})),),
        hugetlb_kib=0,
        nic_bridges={CLUSTER.nics[0].tap: "br-other"},
    )
    found = items(compare(CLUSTER, wrong))
    assert found == {
        "vcpu0 affinity",
        "vcpu0 sched",
        "emulator affinity",
        "iothread affinity",
        "hugepages KiB",
        f"nic veh ({CLUSTER.nics[0].tap}) bridge",
    }
    emu = next(c for c in compare(CLUSTER, wrong) if c.item == "emulator affinity")
    assert emu.actual == "0 0-1"  # every distinct affinity is shown


def test_shares_and_quota_drift() -> None:
    wrong = replace(good(IVI), shares=2048, vcpu_quota_us=(-1,))
    checks = compare(IVI, wrong)
    assert items(checks) == {"cpu.shares", "vcpu0 quota"}
    quota = next(c for c in checks if c.item == "vcpu0 quota")
    assert (quota.planned, quota.actual) == ("80000", "-1")


def test_unreadable_cgroup_values_are_unknown_not_drift() -> None:
    # cgroup v2 (or a vCPU outside its cgroup): quota and shares read as None
    unread = replace(good(IVI), shares=None, vcpu_quota_us=(None,))
    checks = compare(IVI, unread)
    assert drift(checks) == []
    assert not {"cpu.shares", "vcpu0 quota"} & {c.item for c in checks}
    plan = make_plan(SPEC, FACTS, running(ivi=unread, cluster=replace(good(), shares=None)))
    assert [a.kind for a in plan.actions] == ["unchanged", "unchanged"]


def test_detached_nic_and_missing_threads() -> None:
    checks = compare(CLUSTER, replace(good(), nic_bridges={}, iothreads=(), vcpus=()))
    assert {"vcpu threads", "vcpu0 affinity", "iothread affinity"} <= items(checks)
    assert any(c.item.startswith("nic") and c.actual == "-" for c in drift(checks))


def test_a_stopped_vm_is_one_drift() -> None:
    checks = compare(IVI, Observation("shut off"))
    assert [(c.item, c.actual, c.ok) for c in checks] == [("state", "shut off", False)]
    checks = compare(IVI, Observation("running"))  # running elsewhere, no local QEMU
    assert [c.item for c in drift(checks)] == ["QEMU process"]


def test_only_pins_scheduling_shares_and_caps_are_repaired_by_apply() -> None:
    wrong = replace(
        good(),
        vcpus=(ThreadObs(frozenset({0}), "other", 0),),
        hugetlb_kib=0,
        nic_bridges={},
    )
    tunable = {c.item for c in drift(compare(CLUSTER, wrong)) if c.tunable}
    assert tunable == {"vcpu0 affinity", "vcpu0 sched"}
    ivi = {
        c.item
        for c in drift(compare(IVI, replace(good(IVI), shares=1, vcpu_quota_us=(5,))))
        if c.tunable
    }
    assert ivi == {"cpu.shares", "vcpu0 quota"}


def running(**observed: Observation) -> LiveState:
    """The set as applied (fingerprints as planned), with what is observed."""
    return LiveState(
        tuple(
            LiveDomain(
                p.domain,
                True,
                "au",
                p.name,
                p.fingerprint.restart_hash,
                p.fingerprint.live_hash,
                dict(p.fingerprint.groups),
                observed=observed.get(p.name),
            )
            for p in PLAN.vms.values()
        )
    )


def test_the_plan_turns_observed_drift_into_live_repairs() -> None:
    pinned = replace(good(IVI), vcpus=(ThreadObs(frozenset({0})),))
    rt_lost = replace(good(), vcpus=(ThreadObs(CLUSTER.placement.vcpu_pins[0]),))
    plan = make_plan(SPEC, FACTS, running(ivi=pinned, cluster=rt_lost))
    kinds = {a.vm: a for a in plan.actions}
    assert {vm: a.kind for vm, a in kinds.items()} == {
        "cluster": "update-live",
        "ivi": "update-live",
    }
    assert kinds["cluster"].reasons == ("drift: vcpu0 sched other (planned fifo:10)",)
    assert kinds["ivi"].reasons[0].startswith("drift: vcpu0 affinity 0 (planned ")


def test_no_repair_without_drift_unobserved_or_untunable() -> None:
    as_planned = make_plan(SPEC, FACTS, running(ivi=good(IVI), cluster=good()))
    assert [a.kind for a in as_planned.actions] == ["unchanged", "unchanged"]
    unobserved = make_plan(SPEC, FACTS, running())  # a remote host: nothing read
    assert [a.kind for a in unobserved.actions] == ["unchanged", "unchanged"]
    # hugepages and a NIC's bridge cannot be changed live: audit reports them, apply leaves them
    untunable = make_plan(SPEC, FACTS, running(cluster=replace(good(), hugetlb_kib=0)))
    assert [a.kind for a in untunable.actions] == ["unchanged", "unchanged"]


def test_audit_plan_over_all_vms() -> None:
    seen: list[tuple[str, str]] = []

    def look(plan, state):  # type: ignore[no-untyped-def]
        seen.append((plan.name, state))
        return good(plan) if state == "running" else Observation(state)

    report = audit_plan(PLAN, {"au-cluster": "running"}, look)
    assert seen == [("cluster", "running"), ("ivi", "absent")]
    assert [c.describe() for c in report.drift] == ["ivi: state is absent, planned running"]
    data = report.as_dict()
    assert data["clean"] is False and data["set"] == "au"


def test_observe_a_qemu_that_vanishes_mid_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmctl.host import observe as host_observe

    def gone(pid: int) -> None:
        raise psutil.NoSuchProcess(pid)

    monkeypatch.setattr(host_observe.threads, "qemu_pid", lambda domain: 4242)
    monkeypatch.setattr(host_observe.threads, "inspect", gone)
    assert observe(IVI.domain, "running") == Observation("running")


def test_observe_a_vm_that_does_not_run_reads_nothing(tmp_path: Path) -> None:
    assert observe(IVI.domain, "shut off", [], tmp_path) == Observation("shut off")
