"""vCPU placement: dedicated CPUs exclusive, shared pool, housekeeping for emulators."""

from __future__ import annotations

import pytest

from kvmctl.planner.cpuset import format_cpuset, parse_cpuset
from kvmctl.planner.placement import place
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

EXAMPLE_2CORE = """
name: t
host: {housekeeping_cpus: [0]}
vms:
  cluster: {criticality: safety, cpu: {placement: dedicated}}
  hud: {cpu: {placement: shared, shares: 2048}}
  ivi: {vcpus: 2, cpu: {placement: shared, limit: 80%}}
"""


def test_two_cores_dedicated_and_shared_fallback_to_housekeeping() -> None:
    result = place(spec(EXAMPLE_2CORE), facts(cpus=2))
    assert result.problems == []
    assert result.placements["cluster"].vcpu_pins == (frozenset({1}),)
    assert result.placements["cluster"].dedicated
    # Only CPU 0 is left: the shared VMs share the housekeeping CPU, and say so.
    assert result.shared_pool == frozenset({0})
    assert result.placements["ivi"].vcpu_pins == (frozenset({0}), frozenset({0}))
    assert any("housekeeping" in n for n in result.notes)
    for p in result.placements.values():
        assert p.emulator == frozenset({0}) and p.iothread == frozenset({0})


def test_four_cores_shared_pool_excludes_housekeeping_and_dedicated() -> None:
    result = place(spec(EXAMPLE_2CORE), facts(cpus=4))
    assert result.placements["cluster"].vcpu_pins == (frozenset({1}),)
    assert result.shared_pool == frozenset({2, 3})
    assert result.notes == []


def test_dedicated_prefers_isolated_cpus() -> None:
    result = place(spec(EXAMPLE_2CORE), facts(cpus=4, isolated=(3,)))
    assert result.placements["cluster"].vcpu_pins == (frozenset({3}),)
    assert 3 not in result.shared_pool


def test_safety_vm_is_placed_first() -> None:
    s = spec(
        """
        name: t
        vms:
          aaa: {cpu: {placement: dedicated}}
          zzz: {criticality: safety, cpu: {placement: dedicated}}
        """
    )
    result = place(s, facts(cpus=4))
    assert result.placements["zzz"].vcpu_pins == (frozenset({1}),)
    assert result.placements["aaa"].vcpu_pins == (frozenset({2}),)


def test_never_a_dedicated_cpu_shared() -> None:
    s = spec(
        """
        name: t
        vms:
          a: {vcpus: 2, cpu: {placement: dedicated}}
          b: {vcpus: 3}
          c: {cpu: {placement: dedicated}}
        """
    )
    result = place(s, facts(cpus=6))
    dedicated = [c for n in ("a", "c") for c in result.placements[n].cpus]
    assert len(dedicated) == len(set(dedicated)) == 3
    assert not set(dedicated) & result.placements["b"].cpus
    assert not set(dedicated) & {0}


def test_too_many_dedicated_cpus_is_a_problem() -> None:
    s = spec(
        """
        name: t
        vms:
          a: {criticality: safety, cpu: {placement: dedicated}}
          b: {cpu: {placement: dedicated}}
        """
    )
    result = place(s, facts(cpus=2))
    assert len(result.problems) >= 1
    assert "VM 'b' needs 1 dedicated CPU(s) but only 0 are free" in result.problems[0]


def test_every_cpu_dedicated_leaves_shared_vms_nowhere() -> None:
    s = spec(
        """
        name: t
        host: {housekeeping_cpus: [0]}
        vms:
          a: {cpu: {placement: dedicated, cpus: [1]}}
          b: {}
        """
    )
    # Shared VMs may fall back onto the housekeeping CPU; it is never dedicated.
    result = place(s, facts(cpus=2))
    assert result.problems == []
    assert result.placements["b"].cpus == frozenset({0})


def test_explicit_cpus_missing_on_host() -> None:
    s = spec("name: t\nvms:\n  a: {cpu: {placement: dedicated, cpus: [7]}}\n")
    result = place(s, facts(cpus=2))
    assert result.problems == ["VM 'a' wants CPU 7 dedicated, but this host has no CPU 7"]


def test_housekeeping_cpu_missing_on_host() -> None:
    s = spec("name: t\nhost: {housekeeping_cpus: [5]}\nvms:\n  a: {}\n")
    result = place(s, facts(cpus=2))
    assert "housekeeping CPU(s) 5 do not exist" in result.problems[0]


def test_foreign_dedicated_cpus_are_not_reused() -> None:
    s = spec("name: t\nvms:\n  a: {cpu: {placement: dedicated}}\n  b: {}\n")
    result = place(s, facts(cpus=4), foreign_dedicated={1: "other-cluster"})
    assert result.placements["a"].vcpu_pins == (frozenset({2}),)
    assert 1 not in result.placements["b"].cpus
    explicit = spec("name: t\nvms:\n  a: {cpu: {placement: dedicated, cpus: [1]}}\n")
    clash = place(explicit, facts(cpus=4), foreign_dedicated={1: "other-cluster"})
    assert "already dedicated to 'other-cluster'" in clash.problems[0]


def test_shared_vm_explicit_cpus_on_dedicated_cpu() -> None:
    s = spec(
        """
        name: t
        vms:
          a: {criticality: safety, cpu: {placement: dedicated}}
          b: {cpu: {placement: shared, cpus: [1, 2]}}
        """
    )
    result = place(s, facts(cpus=4))
    assert "VM 'b' asks for CPU 1, which is dedicated to 'a'" in result.problems
    assert result.placements["b"].cpus == frozenset({2})


@pytest.mark.parametrize(
    ("text", "cpus", "canonical"),
    [
        ("0-3,^2", {0, 1, 3}, "0-1,3"),
        ("1", {1}, "1"),
        ("0,2,4-6", {0, 2, 4, 5, 6}, "0,2,4-6"),
        ("0-7,^3-5", {0, 1, 2, 6, 7}, "0-2,6-7"),
        (" 1 , 2 ", {1, 2}, "1-2"),
    ],
)
def test_cpuset_round_trip(text: str, cpus: set[int], canonical: str) -> None:
    assert parse_cpuset(text) == cpus
    assert format_cpuset(cpus) == canonical


@pytest.mark.parametrize("bad", ["a", "3-1", "1-", "^", "1,,x"])
def test_cpuset_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_cpuset(bad)


def test_format_empty_cpuset() -> None:
    assert format_cpuset([]) == ""
