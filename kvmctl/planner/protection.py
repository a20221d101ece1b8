"""Emulator-thread protection: a safety VM's emulator and I/O threads run on
the housekeeping CPUs beside the shared VMs' vCPUs, and under TCG its timer
interrupts come from there (bench/RESULTS.md, "interference": its jitter grew
10x when the neighbours hogged that CPU).

The protection is the domain's CPU weight, cpu.shares at its maximum. A
protected VM's vCPUs own their pCPUs (placement: dedicated), so that weight
competes only where its emulator and I/O threads run: they get the
housekeeping CPU first whenever they are runnable. Chosen over a SCHED_FIFO
budget for those threads because RT group scheduling throttles a cgroup that
spends its budget until the next period (a stalled emulator thread is worse
than a late one), and over `<emulatorsched>` because libvirt cannot set a
real-time policy at all where RT group scheduling is on. libvirt sets the
weight (`<cputune><shares>`) at start and live, and audit checks it.

Where the host has CPUs to spare, `host.safety_housekeeping_cpus` gives the
protected VMs' emulator and I/O threads CPUs of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmctl.planner.cpuset import format_cpuset
from kvmctl.spec.models import VM

if TYPE_CHECKING:
    from kvmctl.planner.plan import VmPlan

# cgroup v1 cpu.shares maximum (cgroup v2 cpu.weight 10000, which libvirt maps).
PROTECTED_SHARES = 262144


def protected(vm: VM) -> bool:
    """On when the spec says so; by default for a dedicated safety VM whose
    spec sets no weight of its own."""
    if vm.cpu.protect_emulator is not None:
        return vm.cpu.protect_emulator
    return vm.criticality == "safety" and vm.cpu.placement == "dedicated" and vm.cpu.shares is None


def shares(vm: VM) -> int | None:
    return PROTECTED_SHARES if protected(vm) else vm.cpu.shares


def note(plan: VmPlan) -> str:
    """What `kvmctl plan` says of a protected VM."""
    return (
        f"VM '{plan.name}': emulator and I/O threads protected on CPU(s) "
        f"{format_cpuset(plan.placement.emulator)} (the domain's cpu.shares {plan.shares}; "
        "its vCPUs are dedicated, so the weight acts only there)"
    )
