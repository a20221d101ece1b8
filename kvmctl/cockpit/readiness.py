"""Each VM's boot to ready, as apply and supervisor restarts measured it,
kept in the set's history (kvmctl.state.history) for `kvmctl status`, the
exporter and `kvmctl plan`'s deadline warning."""

from __future__ import annotations

from collections.abc import Iterable

from kvmctl.cockpit.outcome import VmOutcome
from kvmctl.state import history


def remember(set_name: str, outcomes: Iterable[VmOutcome], after: str) -> None:
    """Record the VMs that booted (`after`: "apply" or "restart"), cold or
    warm (restored from a saved state, kvmctl.cockpit.warm)."""
    ready = {
        o.vm: history.Readiness(
            o.since_apply_s,
            o.deadline_s,
            o.deadline_met,
            after,
            cold=o.boot != "warm",
            fallback=o.fallback,
        )
        for o in outcomes
        if o.since_apply_s is not None
    }
    if ready:
        history.record_ready(set_name, ready)
