"""`kvmctl audit`: what runs, compared item by item with the plan.

The reading is kvmctl.host.observe (/proc, cgroups, sysfs), the rules are
kvmctl.planner.drift (pure, unit-tested on hand-made observations); the
planner uses the same rules to repair drift in `kvmctl apply`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from kvmctl.host.observe import observe
from kvmctl.planner.channel_audit import device_checks
from kvmctl.planner.drift import Check, compare, drift
from kvmctl.planner.live import Observation
from kvmctl.planner.plan import Plan, VmPlan


def observe_planned(plan: VmPlan, state: str) -> Observation:
    return observe(plan.domain, state, [nic.tap for nic in plan.nics])


@dataclass
class AuditReport:
    set_name: str
    checks: list[Check]

    @property
    def drift(self) -> list[Check]:
        return drift(self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "set": self.set_name,
            "clean": not self.drift,
            "drift": [c.describe() for c in self.drift],
            "checks": [asdict(c) for c in self.checks],
        }


def audit_plan(
    plan: Plan,
    states: dict[str, str],
    look: Callable[[VmPlan, str], Observation] = observe_planned,
    live_xml: Callable[[str], str] | None = None,
) -> AuditReport:
    """`states`: domain name -> libvirt state name ("running", "shut off", ...);
    `live_xml`: a domain's XML, to check its channel devices."""
    checks: list[Check] = []
    for p in plan.vms.values():
        state = states.get(p.domain, "absent")
        checks += compare(p, look(p, state))
        if live_xml is not None and state in ("running", "paused"):
            checks += device_checks(p, live_xml(p.domain))
    return AuditReport(plan.set_name, checks)
