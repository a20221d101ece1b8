"""Emulator-thread protection: which VMs get it, the weight they get, and
where their emulator and I/O threads go."""

from __future__ import annotations

import pytest

from kvmctl.planner.cpuset import parse_cpuset
from kvmctl.planner.domain import build_domain
from kvmctl.planner.live import LiveDomain, LiveState
from kvmctl.planner.plan import make_plan
from kvmctl.planner.protection import PROTECTED_SHARES, protected
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

COCKPIT = """
name: p
host: {housekeeping_cpus: [0]%s}
vms:
  cluster: {criticality: safety, cpu: {placement: dedicated}}
  hud: {criticality: high, cpu: {placement: dedicated}}
  ivi: {cpu: {placement: shared, shares: 1024, limit: 50%%}}
"""


def cockpit(host: str = "", **edits: str) -> str:
    text = COCKPIT % host
    for vm, cpu in edits.items():
        start = text.index(f"  {vm}:")
        end = text.index("\n", start)
        text = text[:start] + f"  {vm}: {cpu}" + text[end:]
    return text


@pytest.mark.parametrize(
    ("vm", "expected"),
    [
        ("{criticality: safety, cpu: {placement: dedicated}}", True),
        ("{criticality: safety, cpu: {placement: dedicated, protect_emulator: false}}", False),
        ("{criticality: safety, cpu: {placement: dedicated, shares: 512}}", False),
        ("{criticality: safety, cpu: {placement: shared}}", False),
        ("{criticality: high, cpu: {placement: dedicated}}", False),
        ("{criticality: high, cpu: {placement: dedicated, protect_emulator: true}}", True),
        ("{criticality: normal, cpu: {placement: dedicated, protect_emulator: true}}", True),
    ],
)
def test_who_is_protected(vm: str, expected: bool) -> None:
    parsed = spec(f"name: p\nvms:\n  a: {vm}\n")
    assert protected(parsed.vms["a"]) is expected


def test_protected_vm_gets_the_maximum_weight_others_keep_theirs() -> None:
    plan = make_plan(spec(cockpit()), facts(cpus=4))
    assert plan.vms["cluster"].shares == PROTECTED_SHARES
    assert plan.vms["hud"].shares is None
    assert plan.vms["ivi"].shares == 1024
    # without a CPU of their own, the protected threads stay on the housekeeping CPU
    assert plan.vms["cluster"].placement.emulator == frozenset({0})
    row = plan.vms["cluster"].summary()
    assert row["shares"] == PROTECTED_SHARES
    assert any(
        n.startswith("VM 'cluster': emulator and I/O threads protected on CPU(s) 0")
        for n in plan.notes
    )


def test_protection_off_is_a_live_change() -> None:
    on = make_plan(spec(cockpit()), facts(cpus=4)).vms["cluster"]
    off = make_plan(
        spec(
            cockpit(
                cluster="{criticality: safety, cpu: {placement: dedicated, protect_emulator: false}}"
            )
        ),
        facts(cpus=4),
    ).vms["cluster"]
    assert off.shares is None
    assert on.fingerprint.restart_hash == off.fingerprint.restart_hash
    assert on.fingerprint.live_hash != off.fingerprint.live_hash


def test_safety_housekeeping_cpu_is_the_protected_vms_own() -> None:
    plan = make_plan(spec(cockpit(", safety_housekeeping_cpus: [3]")), facts(cpus=5))
    assert plan.problems == []
    cluster, hud, ivi = (plan.vms[n].placement for n in ("cluster", "hud", "ivi"))
    assert cluster.emulator == cluster.iothread == frozenset({3})
    assert hud.emulator == ivi.emulator == frozenset({0})  # not protected
    taken = {c for p in (cluster, hud) for pins in p.vcpu_pins for c in pins}
    assert 3 not in taken  # never dedicated
    assert 3 not in plan.shared_pool and 3 not in ivi.cpus  # never shared


def test_safety_housekeeping_cpu_missing_on_the_host() -> None:
    plan = make_plan(spec(cockpit(", safety_housekeeping_cpus: [7]")), facts(cpus=4))
    assert any("safety housekeeping CPU(s) 7 do not exist" in p for p in plan.problems)


def test_safety_housekeeping_cpu_without_a_protected_vm_is_noted() -> None:
    text = cockpit(
        ", safety_housekeeping_cpus: [3]",
        cluster="{criticality: safety, cpu: {placement: dedicated, protect_emulator: false}}",
    )
    plan = make_plan(spec(text), facts(cpus=5))
    assert plan.problems == []
    assert any("CPU(s) 3 stay idle" in n for n in plan.notes)


def test_another_set_never_takes_the_safety_housekeeping_cpu() -> None:
    plan = make_plan(spec(cockpit(", safety_housekeeping_cpus: [3]")), facts(cpus=5))
    cluster = plan.vms["cluster"]
    meta = build_domain(cluster, rt_by_thread=True).metadata
    assert meta is not None and meta.kvmctl is not None and meta.kvmctl.dedicated is not None
    claimed = parse_cpuset(meta.kvmctl.dedicated)
    assert claimed == cluster.placement.cpus | {3}
    live = LiveState((LiveDomain(cluster.domain, True, "p", "cluster", dedicated_cpus=claimed),))
    other = make_plan(
        spec("name: q\nvms:\n  a: {cpu: {placement: dedicated}}\n  b: {}\n"), facts(cpus=5), live
    )
    assert 3 not in other.vms["a"].placement.cpus
    assert 3 not in other.shared_pool
