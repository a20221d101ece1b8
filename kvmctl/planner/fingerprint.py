"""A VM plan's fingerprint: one hash per group of settings (diff.py names the
groups a change restarts the VM for and those set live), recorded with the
domain, so a later plan sees what changed and how to apply it. Pure.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.diff import Fingerprint

if TYPE_CHECKING:
    from kvmctl.planner.plan import VmPlan


def with_fingerprint(plan: VmPlan) -> VmPlan:
    """The plan with the fingerprint of its settings, group by group."""
    vm = plan.vm
    settings: dict[str, object] = {
        "vcpus": vm.vcpus,
        "cpu-mode": vm.cpu.placement,
        # Policy and priority need the domain XML (vcpusched) at start; the
        # RT budgets are host-derived and set live by thread, so a host with
        # other budgets (a migration's destination) changes no restart group.
        "realtime": None
        if plan.realtime is None
        else {"policy": plan.realtime.policy, "priority": plan.realtime.priority},
        "rt-budget": None
        if plan.realtime is None
        else [
            plan.realtime.period_us,
            plan.realtime.domain_runtime_us,
            plan.realtime.vcpu_runtime_us,
        ],
        "memory": vm.memory.model_dump(mode="json"),
        "image": [
            vm.image.model_dump(mode="json"),
            plan.kernel,
            plan.initrd,
            plan.cmdline,
            # Only where there is a seed, so existing fingerprints stay as they were.
            *([plan.seed.digest] if plan.seed else []),
        ],
        "disk": vm.disk.size,
        "networks": [
            [
                n.bridge,
                n.mac,
                str(n.address),
                n.port_isolated,
                n.tap,
                n.bandwidth.model_dump(mode="json") if n.bandwidth else None,
            ]
            for n in plan.nics
        ],
        "display": None if vm.display is None else vm.display.model_dump(mode="json"),
        "watchdog": None if vm.watchdog is None else vm.watchdog.model_dump(mode="json"),
        "virt-type": plan.virt_type,
        "shares": plan.shares,
        "cap": [plan.period_us, plan.quota_us],
        "pins": [
            [format_cpuset(c) for c in plan.placement.vcpu_pins],
            format_cpuset(plan.placement.emulator),
            format_cpuset(plan.placement.iothread),
        ],
        "iotune": [vm.disk.iops_limit, vm.disk.bps_limit],
        "labels": [vm.role, vm.criticality],
    }
    channels = plan.channels.settings()
    if channels is not None:
        settings["channels"] = channels
    return replace(plan, fingerprint=Fingerprint.of(settings))
