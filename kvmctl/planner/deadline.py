"""Boot deadlines (`ready.deadline`): met or missed, and whether the recorded
history says a deadline can be met by a cold boot at all. Pure.

A deadline counts from the start of apply (or from the supervisor's decision
to restart the VM) to its readiness, so it includes what comes before the
VM's own start: waiting for the VMs it depends on, defining, starting paused,
the post-start step.
"""

from __future__ import annotations

from collections.abc import Mapping

from kvmctl.spec.models import VM


def met(deadline: float | None, seconds: float | None) -> bool | None:
    """Whether `seconds` to ready met `deadline`; None when either is unknown."""
    if deadline is None or seconds is None:
        return None
    return seconds <= deadline


def verdict(deadline: float, seconds: float) -> str:
    """'deadline 2 s met (1.40 s)', for apply's and status's output."""
    return (
        f"deadline {deadline:g} s {'met' if met(deadline, seconds) else 'missed'} ({seconds:.2f} s)"
    )


def missed(vm: str, deadline: float, seconds: float) -> str:
    """The cause of an apply failed by a missed fatal deadline."""
    return (
        f"VM '{vm}' missed its ready.deadline of {deadline:g} s (ready after {seconds:.2f} s), "
        "and ready.deadline_fatal is set"
    )


def cold_warnings(vms: Mapping[str, VM], best_cold: Mapping[str, float]) -> list[str]:
    """A warning for each VM whose deadline is shorter than the fastest cold
    boot to ready recorded for it (`best_cold`: VM -> seconds)."""
    out = []
    for name, vm in vms.items():
        deadline, best = vm.ready.deadline, best_cold.get(name)
        if deadline is not None and best is not None and best > deadline:
            warm = "; a warm start (boot.mode warm) can, from its saved state"
            out.append(
                f"VM '{name}': ready.deadline {deadline:g} s cannot be met by a cold boot: the "
                f"fastest one recorded was ready {best:.2f} s after apply began"
                + (warm if vm.boot.mode == "warm" else "")
            )
    return out
