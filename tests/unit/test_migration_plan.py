"""Migration planning: policy, order, destination placement, destination XML,
transport checks (pure)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvmctl.errors import UsageError
from kvmctl.migration.transport import check_destination, default_migrate_uri
from kvmctl.planner.domain import build_domain
from kvmctl.planner.live import LiveDomain, LiveState
from kvmctl.planner.migration import (
    Overrides,
    Policy,
    migration_order,
    plan_destination,
    postcopy_due,
    resolve_policy,
)
from kvmctl.planner.plan import PlanOptions, make_plan
from kvmctl.xml.base import parse_xml
from kvmctl.xml.metadata import read_kvmctl_metadata
from kvmctl.xml.migratable import retarget
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

SET = """
name: s
host: {housekeeping_cpus: [0]}
vms:
  cluster:
    criticality: safety
    cpu: {placement: dedicated}
    memory: {size: 256MiB, hugepages: 2MiB}
  hud:
    criticality: high
    depends_on: [cluster]
  ivi: {}
  passenger:
    depends_on: [ivi]
    migration: {max_downtime: 300ms, postcopy: true, bandwidth: 100MB/s, multifd: 4}
"""


def test_policy_defaults_by_criticality() -> None:
    s = spec(SET)
    assert resolve_policy(s.vms["cluster"])[0].max_downtime_ms == 50
    assert resolve_policy(s.vms["hud"])[0].max_downtime_ms == 150
    ivi, problems = resolve_policy(s.vms["ivi"])
    assert (ivi.max_downtime_ms, ivi.auto_converge, ivi.postcopy, problems) == (
        300,
        True,
        False,
        [],
    )


def test_policy_from_spec_and_flags_over_spec() -> None:
    vm = spec(SET).vms["passenger"]
    p, _ = resolve_policy(vm)
    assert (p.max_downtime_ms, p.postcopy, p.bandwidth_mibps, p.multifd) == (300, True, 95, 4)
    p, _ = resolve_policy(vm, Overrides(max_downtime_ms=20, postcopy=False, bandwidth_mibps=8))
    assert (p.max_downtime_ms, p.postcopy, p.bandwidth_mibps) == (20, False, 8)


@pytest.mark.parametrize("o", [Overrides(postcopy=True), Overrides(on_timeout="postcopy")])
def test_safety_vm_refuses_postcopy(o: Overrides) -> None:
    _, problems = resolve_policy(spec(SET).vms["cluster"], o)
    assert problems and "safety" in problems[0]


def test_on_timeout_postcopy_enables_postcopy_and_xbzrle_with_multifd_is_refused() -> None:
    vm = spec(SET).vms["ivi"]
    assert resolve_policy(vm, Overrides(on_timeout="postcopy"))[0].postcopy is True
    _, problems = resolve_policy(vm, Overrides(multifd=2, compression="xbzrle"))
    assert problems


def test_whole_set_order_moves_the_safety_vm_last_and_dependants_first() -> None:
    s = spec(SET)
    order = migration_order(s, list(s.vms))
    assert order[-1] == "cluster"
    assert order.index("passenger") < order.index("ivi")
    assert order.index("hud") < order.index("cluster")


class P:
    def __init__(self, iteration: int, remaining: int):
        self.iteration = iteration
        self.data_remaining = remaining


def policy() -> Policy:
    return resolve_policy(spec(SET).vms["passenger"])[0]


@pytest.mark.parametrize(
    ("history", "due"),
    [
        ([], False),
        ([P(1, 100), P(2, 100)], False),  # too early
        ([P(3, 100), P(4, 95)], True),  # not shrinking
        ([P(3, 100), P(4, 50)], False),  # still converging
        ([P(4, 100)], False),  # nothing to compare with
    ],
)
def test_postcopy_is_due_when_precopy_stops_converging(history: list[P], due: bool) -> None:
    assert postcopy_due(policy(), history) is due


def test_destination_pins_avoid_cpus_dedicated_there_even_to_the_same_set() -> None:
    s = spec(SET)
    live = LiveState(
        domains=(
            LiveDomain("other-x", True, set_name="other", vm="x", dedicated_cpus=frozenset({1})),
        )
    )
    planned = plan_destination(s, ["cluster"], facts(3), live, PlanOptions())
    assert planned.problems == []
    assert planned.vms["cluster"].placement.vcpu_pins == (frozenset({2}),)

    # The set's own VM already there keeps its CPU (it is not re-placed).
    live = LiveState(
        domains=(LiveDomain("s-hud", True, set_name="s", vm="hud", dedicated_cpus=frozenset({1})),)
    )
    planned = plan_destination(s, ["cluster"], facts(2), live, PlanOptions())
    assert any("dedicated" in p for p in planned.problems)


def test_destination_refuses_missing_hugepages_and_existing_domain() -> None:
    s = spec(SET)
    planned = plan_destination(s, ["cluster"], facts(3, free_2m=10), LiveState(), PlanOptions())
    assert any("hugepages" in p for p in planned.problems)
    live = LiveState(domains=(LiveDomain("s-ivi", False, set_name="s", vm="ivi"),))
    planned = plan_destination(s, ["ivi"], facts(3), live, PlanOptions())
    assert any("already defined" in p for p in planned.problems)


def test_retarget_replaces_only_host_parts() -> None:
    s = spec(SET)
    here = make_plan(s, facts(2), LiveState(), PlanOptions()).vms["cluster"]
    there = plan_destination(s, ["cluster"], facts(4), LiveState(), PlanOptions()).vms["cluster"]
    source_xml = build_domain(here, rt_by_thread=True).to_xml()
    out = retarget(source_xml, build_domain(there, rt_by_thread=True))
    root = parse_xml(out)
    assert root.find("cputune/vcpupin").get("cpuset") == ",".join(
        str(c) for c in sorted(there.placement.vcpu_pins[0])
    )
    assert root.find("vcpu").get("cpuset") == root.find("cputune/vcpupin").get("cpuset")
    meta = read_kvmctl_metadata(out)
    assert meta is not None and meta.dedicated == root.find("vcpu").get("cpuset")
    # Everything else is the source's, untouched.
    src = parse_xml(source_xml)
    for tag in ("devices", "os", "memoryBacking", "uuid", "name"):
        assert parse_xml(out).find(tag) is not None
        assert len(list(root.find(tag).iter())) == len(list(src.find(tag).iter()))


@pytest.mark.parametrize(
    ("uri", "insecure", "words"),
    [
        ("qemu+tcp://h/system", False, "plain TCP"),
        ("http://h/", True, "not a destination"),
        ("qemu+ssh://h", True, "not a destination"),
        ("qemu:///system", True, "source itself"),
    ],
)
def test_transport_refusals(uri: str, insecure: bool, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        check_destination(uri, "qemu:///system", insecure)


@pytest.mark.parametrize("uri", ["qemu+ssh://h/system", "qemu+tls://h/system"])
def test_authenticated_transports_pass(uri: str) -> None:
    assert check_destination(uri, "qemu:///system", False) == uri
    assert default_migrate_uri(uri) == "tcp://h"


@pytest.mark.parametrize(
    ("uri", "stream"),
    [
        ("qemu+tcp://10.251.0.2/system", "tcp://10.251.0.2"),  # a lab host: its veth
        ("qemu+ssh://root@soc-b:2222/system", "tcp://soc-b"),  # not ssh's user or port
        ("qemu+tls://[fd00::2]/system", "tcp://[fd00::2]"),
        ("qemu:///system", None),
    ],
)
def test_the_stream_goes_where_the_destination_libvirtd_was_reached(
    uri: str, stream: str | None
) -> None:
    assert default_migrate_uri(uri) == stream


def test_migration_does_not_import_the_testing_package() -> None:
    code = "import sys, kvmctl.migration; print('kvmctl.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
