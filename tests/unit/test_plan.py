"""The plan as a whole: resources against host facts, diff against live state, networks."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmctl.planner.diff import Fingerprint
from kvmctl.planner.live import LiveDomain, LiveState
from kvmctl.planner.networks import diff_bridges, parse_alias, plan_bridges
from kvmctl.planner.order import start_levels
from kvmctl.planner.plan import PlanOptions, make_plan
from kvmctl.spec import load_spec
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cockpit.yaml"


def live_from(plan_vms: dict, *, active: bool = True, set_name: str = "demo-cockpit") -> LiveState:
    return LiveState(
        tuple(
            LiveDomain(
                name=p.domain,
                active=active,
                set_name=set_name,
                vm=p.name,
                restart_hash=p.fingerprint.restart_hash,
                live_hash=p.fingerprint.live_hash,
                groups=dict(p.fingerprint.groups),
                dedicated_cpus=p.placement.cpus if p.placement.dedicated else frozenset(),
            )
            for p in plan_vms.values()
        )
    )


def test_example_plans_cleanly_on_a_two_core_host() -> None:
    plan = make_plan(load_spec(EXAMPLE), facts(cpus=2))
    assert plan.problems == []
    assert [a.kind for a in plan.actions] == ["create"] * 4
    cluster = plan.vms["cluster"]
    assert cluster.placement.vcpu_pins == (frozenset({1}),)
    assert cluster.realtime is not None and cluster.realtime.domain_runtime_us == 900_000
    assert plan.vms["ivi"].quota_us == 80_000 and plan.vms["ivi"].period_us == 100_000
    assert plan.vms["passenger"].quota_us == 50_000
    assert plan.vms["hud"].shares == 2048 and plan.vms["hud"].quota_us is None
    assert plan.levels == [["cluster", "ivi", "passenger"], ["hud"]]
    assert plan.virt_type == "qemu" and any("TCG" in w for w in plan.warnings)
    assert [b.kind for b in plan.bridge_actions] == ["create", "create"]


def test_usable_kvm_plans_kvm() -> None:
    plan = make_plan(load_spec(EXAMPLE), facts(cpus=2, kvm="usable"))
    assert plan.virt_type == "kvm" and plan.warnings == []


def test_reapply_is_unchanged() -> None:
    s = load_spec(EXAMPLE)
    first = make_plan(s, facts())
    again = make_plan(s, facts(free_2m=0), live_from(first.vms))
    assert [a.kind for a in again.actions] == ["unchanged"] * 4
    # Hugepages held by running, unchanged VMs are not asked for again.
    assert again.problems == []


def test_shares_change_is_live_vcpus_change_restarts_one() -> None:
    base = spec("name: demo-cockpit\nvms:\n  a: {cpu: {shares: 1024}}\n  b: {}\n")
    live = live_from(make_plan(base, facts()).vms)
    shares = spec("name: demo-cockpit\nvms:\n  a: {cpu: {shares: 4096}}\n  b: {}\n")
    kinds = {a.vm: (a.kind, a.reasons) for a in make_plan(shares, facts(), live).actions}
    assert kinds == {"a": ("update-live", ("shares",)), "b": ("unchanged", ())}
    vcpus = spec("name: demo-cockpit\nvms:\n  a: {vcpus: 2, cpu: {shares: 1024}}\n  b: {}\n")
    kinds = {a.vm: (a.kind, a.reasons) for a in make_plan(vcpus, facts(), live).actions}
    assert kinds["a"][0] == "restart" and "vcpus" in kinds["a"][1]
    assert kinds["b"] == ("unchanged", ())


def test_removed_vm_is_deleted_first_and_stopped_vm_is_started() -> None:
    base = spec("name: demo-cockpit\nvms:\n  a: {}\n  b: {}\n")
    live = live_from(make_plan(base, facts()).vms)
    fewer = spec("name: demo-cockpit\nvms:\n  a: {}\n")
    actions = make_plan(fewer, facts(), live).actions
    assert (actions[0].kind, actions[0].vm) == ("delete", "b")
    stopped = live_from(make_plan(base, facts()).vms, active=False)
    assert {a.kind for a in make_plan(base, facts(), stopped).actions} == {"start"}


def test_domain_of_another_owner_is_refused() -> None:
    s = spec("name: demo-cockpit\nvms:\n  a: {}\n")
    live = LiveState((LiveDomain(name="demo-cockpit-a", active=True),))
    plan = make_plan(s, facts(), live)
    assert any("will not touch it" in p for p in plan.problems)


def test_other_sets_dedicated_cpus_are_respected() -> None:
    s = spec("name: mine\nvms:\n  a: {cpu: {placement: dedicated}}\n")
    other = LiveState((LiveDomain("x-c", True, "x", "c", dedicated_cpus=frozenset({1})),))
    plan = make_plan(s, facts(cpus=3), other)
    assert plan.vms["a"].placement.vcpu_pins == (frozenset({2}),)
    assert make_plan(s, facts(cpus=2), other).problems


@pytest.mark.parametrize(
    ("free", "ok"),
    [(256, True), (255, False), (0, False)],
)
def test_hugepages_against_free(free: int, ok: bool) -> None:
    s = spec(
        "name: t\nvms:\n  a: {memory: {size: 256MiB, hugepages: 2MiB}}\n  b: {memory: {size: 256MiB, hugepages: 2MiB}}\n"
    )
    problems = make_plan(s, facts(free_2m=free)).problems
    assert (problems == []) is ok
    if not ok:
        assert f"a, b need 256 x 2MiB hugepages but only {free} are free" in problems[0]


def test_one_gib_hugepages() -> None:
    s = spec("name: t\nvms:\n  a: {memory: {size: 1GiB, hugepages: 1GiB}}\n")
    assert "need 1 x 1GiB hugepages but only 0 are free" in make_plan(s, facts()).problems[0]
    assert make_plan(s, facts(free_1g=1)).problems == []


def test_hugetlbfs_must_be_mounted() -> None:
    s = spec("name: t\nvms:\n  a: {memory: {hugepages: 2MiB}}\n")
    f = facts().model_copy(update={"hugetlbfs_mounts": []})
    assert any("hugetlbfs" in p for p in make_plan(s, f).problems)


def test_memory_beyond_host() -> None:
    s = spec("name: t\nvms:\n  a: {memory: {size: 30GiB}}\n")
    problems = make_plan(s, facts(mem_gib=24)).problems
    assert any("MiB of ordinary memory" in p for p in problems)


def test_locked_memory_impossible_with_memlock_limit() -> None:
    s = spec("name: t\nvms:\n  a: {memory: {locked: true}}\n")
    problems = make_plan(s, facts(memlock_kib=8192)).problems
    assert any("impossible on this host: the memlock limit is 8 MiB" in p for p in problems)
    assert make_plan(s, facts(cap_sys_resource=True)).problems == []
    assert make_plan(s, facts(memlock_kib=None)).problems == []


def test_realtime_budget_split_and_bounds() -> None:
    two = spec(
        "name: t\nvms:\n  a: {cpu: {placement: dedicated, realtime: {priority: 5}}}\n"
        "  b: {vcpus: 2, cpu: {placement: dedicated, realtime: {priority: 6}}}\n"
    )
    plan = make_plan(two, facts(cpus=4))
    assert plan.vms["a"].realtime.domain_runtime_us == 450_000  # type: ignore[union-attr]
    assert plan.vms["b"].realtime.vcpu_runtime_us == 225_000  # type: ignore[union-attr]
    greedy = spec(
        "name: t\nhost: {rt_budget: 95%}\nvms:\n  a: {cpu: {placement: dedicated, realtime: {}}}\n"
    )
    f = facts().model_copy(update={"rt_runtime_us_root": 900_000})
    assert any("exceeds the host's 900000 us" in p for p in make_plan(greedy, f).problems)
    no_rt = make_plan(greedy, facts(rt=False))
    assert no_rt.vms["a"].realtime.domain_runtime_us == 0  # type: ignore[union-attr]


def test_vlan_refused_without_8021q() -> None:
    s = spec(
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24, vlan: 20}\nvms:\n  a: {networks: [n]}\n"
    )
    problems = make_plan(s, facts()).problems
    assert any("no 802.1Q support" in p for p in problems)
    ok = facts().model_copy(update={"vlan_supported": True})
    assert make_plan(s, ok).problems == []


def test_bridges_ownership() -> None:
    s = spec(
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24}\nvms:\n  a: {networks: [n]}\n"
    )
    wanted = plan_bridges(s)
    assert parse_alias(wanted[0].alias) == ("t", "n")
    actions, problems = diff_bridges("t", wanted, {"br0": None})
    assert actions == [] and "kvmctl did not create it" in problems[0]
    actions, problems = diff_bridges(
        "t", wanted, {"br0": "kvmctl:t:n", "old": "kvmctl:t:gone", "x": "kvmctl:u:n"}
    )
    assert [(a.kind, a.bridge) for a in actions] == [("unchanged", "br0"), ("delete", "old")]
    assert problems == []


def test_multi_host_plans_only_this_hosts_vms() -> None:
    s = spec(
        "name: t\nhosts:\n  soc-b: {uri: 'qemu+ssh://b/system'}\n"
        "vms:\n  a: {}\n  b: {host: soc-b, depends_on: [a]}\n"
    )
    assert list(make_plan(s, facts()).vms) == ["a"]
    remote = make_plan(s, facts(), host="soc-b")
    assert list(remote.vms) == ["b"] and remote.levels == [["b"]]


def test_builtin_image_paths_and_cmdline() -> None:
    plan = make_plan(load_spec(EXAMPLE), facts(), options=PlanOptions(image_root="/img"))
    cluster = plan.vms["cluster"]
    assert cluster.kernel == "/img/test-guest-rt/vmlinux"  # the RT kernel boots via PVH
    assert cluster.initrd == "/img/test-guest-rt/initrd.img"
    nic = cluster.nics[0]
    assert f"kvmctl.ip={nic.mac},{nic.address}" in (cluster.cmdline or "")
    assert "kvmctl.name=cluster" in (cluster.cmdline or "")


def test_start_levels_diamond() -> None:
    s = spec(
        "name: t\nvms:\n  a: {}\n  b: {depends_on: [a]}\n  c: {depends_on: [a]}\n  d: {depends_on: [b, c]}\n"
    )
    assert start_levels(s.vms) == [["a"], ["b", "c"], ["d"]]


def test_fingerprint_rejects_unknown_group() -> None:
    with pytest.raises(ValueError):
        Fingerprint.of({"nonsense": 1})
