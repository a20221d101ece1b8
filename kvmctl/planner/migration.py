"""Migration planning (pure): the policy a VM moves under, the order a set
moves in, and the VM's plan on the destination host.

The destination plan comes from the same planner as `kvmctl apply`: the VM's
spec, the destination's facts and what already runs there. Its pins are the
destination's own, never the source's copied verbatim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from kvmctl.host.facts import HostFacts
from kvmctl.planner.channels import migration_refusals
from kvmctl.planner.live import LiveState
from kvmctl.planner.order import level_of, start_levels
from kvmctl.planner.placement import CRITICALITY_ORDER
from kvmctl.planner.plan import PlanOptions, VmPlan, make_plan
from kvmctl.spec.models import VM, Cockpit, Migration

# Bounded downtime by criticality when the spec names none. QEMU's own default
# is 300 ms; a safety VM (an instrument cluster) must not stall that long.
DEFAULT_DOWNTIME_MS = {"safety": 50, "high": 150, "normal": 300}
# Pre-copy that has not converged after this many passes is not going to.
POSTCOPY_AFTER_ITERATIONS = 4


class JobProgressLike(Protocol):
    @property
    def iteration(self) -> int: ...

    @property
    def data_remaining(self) -> int: ...


@dataclass(frozen=True)
class Overrides:
    """Command-line flags; None leaves the spec's (or the default) value."""

    max_downtime_ms: int | None = None
    bandwidth_mibps: int | None = None
    auto_converge: bool | None = None
    postcopy: bool | None = None
    multifd: int | None = None
    compression: str | None = None
    completion_timeout_s: float | None = None
    on_timeout: str | None = None


@dataclass(frozen=True)
class Policy:
    max_downtime_ms: int
    bandwidth_mibps: int | None
    auto_converge: bool
    postcopy: bool
    multifd: int | None
    compression: str | None
    completion_timeout_s: float | None
    on_timeout: str  # "abort" | "postcopy"
    postcopy_after_iterations: int = POSTCOPY_AFTER_ITERATIONS


def resolve_policy(vm: VM, overrides: Overrides | None = None) -> tuple[Policy, list[str]]:
    """The VM's migration policy: flags over spec over criticality defaults.
    Returns the policy and the problems that make it unusable (exit 2)."""
    o = overrides or Overrides()
    spec: Migration = vm.migration
    downtime = o.max_downtime_ms
    if downtime is None and spec.max_downtime is not None:
        downtime = max(1, round(spec.max_downtime * 1000))
    bandwidth = o.bandwidth_mibps
    if bandwidth is None and spec.bandwidth is not None:
        bandwidth = max(1, spec.bandwidth // 1024**2)  # bytes/s -> MiB/s, libvirt's unit
    policy = Policy(
        max_downtime_ms=downtime if downtime is not None else DEFAULT_DOWNTIME_MS[vm.criticality],
        bandwidth_mibps=bandwidth,
        auto_converge=spec.auto_converge if o.auto_converge is None else o.auto_converge,
        postcopy=spec.postcopy if o.postcopy is None else o.postcopy,
        multifd=spec.multifd if o.multifd is None else o.multifd,
        compression=spec.compression if o.compression is None else o.compression,
        completion_timeout_s=spec.completion_timeout
        if o.completion_timeout_s is None
        else o.completion_timeout_s,
        on_timeout=spec.on_timeout if o.on_timeout is None else o.on_timeout,
    )
    problems = []
    if vm.criticality == "safety" and (policy.postcopy or policy.on_timeout == "postcopy"):
        # In post-copy the guest runs on the destination while its memory is
        # still partly on the source: losing either host or the link loses it.
        problems.append(
            "post-copy is refused for a safety VM: a lost link mid-way would lose the "
            "guest on both hosts (use auto-converge and a bounded downtime)"
        )
    if policy.on_timeout == "postcopy" and not policy.postcopy:
        policy = replace(policy, postcopy=True)
    if policy.multifd and policy.compression in ("xbzrle",):
        problems.append("xbzrle compression cannot be combined with multifd connections")
    return policy, problems


def migration_order(spec: Cockpit, names: list[str]) -> list[str]:
    """Whole-set order: least critical first and dependants before what they
    depend on, so the safety VM moves last, once, when nothing else can fail
    in its way; a failure stops the set with the safety VM untouched."""
    levels = level_of(start_levels({n: spec.vms[n] for n in names}))
    return sorted(
        names,
        key=lambda n: (-CRITICALITY_ORDER[spec.vms[n].criticality], -levels[n], n),
    )


def destination_spec(spec: Cockpit, names: list[str]) -> Cockpit:
    """The spec as the destination sees it: only the arriving VMs, placed on
    that host; dependencies on VMs that stay behind count as satisfied."""
    vms = {n: spec.vms[n].model_copy(update={"host": None}) for n in names}
    return spec.model_copy(update={"vms": vms})


@dataclass(frozen=True)
class DestinationPlan:
    vms: dict[str, VmPlan]
    problems: list[str]
    notes: list[str]


def plan_destination(
    spec: Cockpit,
    names: list[str],
    facts: HostFacts,
    live: LiveState,
    options: PlanOptions,
) -> DestinationPlan:
    """The arriving VMs' plans on the destination, placed together beside what
    runs there already, and why they cannot go there, if they cannot."""
    plan = make_plan(destination_spec(spec, names), facts, live, options, arriving=True)
    problems = list(plan.problems)
    problems += [
        f"a domain named '{a.domain}' is already defined on the destination"
        for a in plan.actions
        if a.vm in names and a.kind != "create"
    ]
    problems += migration_refusals(spec, names)
    return DestinationPlan(plan.vms, problems, plan.notes + plan.warnings)


def postcopy_due(policy: Policy, history: Sequence[JobProgressLike]) -> bool:
    """Pre-copy has stopped converging: it has gone through enough passes and
    the last pass left no less to send than the one before (within 10 %)."""
    if not history or history[-1].iteration < policy.postcopy_after_iterations:
        return False
    last = history[-1]
    earlier = [p for p in history if p.iteration == last.iteration - 1]
    if not earlier:
        return False
    return last.data_remaining >= 0.9 * min(p.data_remaining for p in earlier)
