"""What the declared safe state does, event by event (pure).

No libvirt, no sockets, no clock: the supervisor passes in the set's
`SafeConfig` (from `safe_state:`), what is in force now (a `SafeState`) and
what happened (`Happened`), and gets back a `Transition`: the state after,
the steps to apply to which VMs, and what to log. So every rule is a table
test (tests/unit/test_supervise_safestate.py).

Rules:
- A trigger is (what, watched VM): `heartbeat_missed`, `crashed` (any
  failure the restart policy sees: crash, killed QEMU, panic, watchdog, not
  ready), `gave_up` (the restart budget is spent). Only triggers the spec
  declares count, only for watched VMs; a repeat of an active one changes
  nothing.
- While any trigger is active the set is degraded. pause and cap act on the
  `shed` VMs, as long as at least one active trigger asks for them; the
  safety VM's own restart (heartbeat_missed: restart) is asked once, when the
  miss begins, through the supervisor's restart path.
- A trigger clears on its own return to normal: a heartbeat miss when a beat
  arrives again; a crash or a spent budget when the VM is running and ready
  again. Once nothing is active, the shed VMs are resumed and uncapped and the
  degraded mark is cleared.
- A heartbeat of a VM an operator stopped is not missed: nothing in the guest
  failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kvmctl.spec.models import Cockpit
from kvmctl.spec.safestate_rules import watched_vms

What = Literal["heartbeat-missed", "heartbeat-resumed", "failed", "gave-up", "ready"]
StepKind = Literal["pause", "resume", "cap", "uncap", "restart"]
# Phases (kvmctl.supervise.board.VmWatch) of a VM an operator stopped or removed.
OPERATOR_PHASES = frozenset({"down", "absent"})
_TRIGGER_OF: Mapping[str, str] = {
    "heartbeat-missed": "heartbeat_missed",
    "failed": "crashed",
    "gave-up": "gave_up",
}
_CLEARED_BY: Mapping[str, frozenset[str]] = {
    "heartbeat-resumed": frozenset({"heartbeat_missed"}),
    "ready": frozenset({"crashed", "gave_up"}),
}


@dataclass(frozen=True)
class SafeConfig:
    watch: tuple[str, ...]
    shed: tuple[str, ...]
    cap: float | None  # percent of each vCPU
    actions: Mapping[str, frozenset[str]]  # declared trigger -> its actions

    @classmethod
    def from_spec(cls, spec: Cockpit) -> SafeConfig | None:
        safe = spec.safe_state
        if safe is None:
            return None
        declared = {
            trigger: frozenset(actions)
            for trigger in ("heartbeat_missed", "crashed", "gave_up")
            if (actions := safe.actions(trigger)) is not None
        }
        return cls(tuple(watched_vms(spec)), tuple(safe.shed), safe.cap, declared)


@dataclass(frozen=True)
class SafeState:
    """What is in force: the active triggers (trigger, VM) and the measures
    applied to the shed VMs."""

    active: frozenset[tuple[str, str]] = frozenset()
    applied: frozenset[str] = frozenset()  # of "pause", "cap"

    @property
    def degraded(self) -> bool:
        return bool(self.active)

    def reasons(self) -> list[str]:
        return [f"{trigger}:{vm}" for trigger, vm in sorted(self.active)]


@dataclass(frozen=True)
class Happened:
    what: What
    vm: str
    phase: str = "running"  # the VM's supervisor phase when it happened


@dataclass(frozen=True)
class Step:
    kind: StepKind
    vm: str
    limit: float | None = None  # cap: percent of each vCPU

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"action": self.kind, "vm": self.vm}
        if self.limit is not None:
            out["limit_pct"] = self.limit
        return out


@dataclass(frozen=True)
class Transition:
    state: SafeState
    steps: tuple[Step, ...] = ()
    entered: tuple[str, ...] = ()  # triggers that became active, "trigger:vm"
    cleared: tuple[str, ...] = ()
    ignored: str | None = None  # why the event changed nothing, when it did not count

    @property
    def changed(self) -> bool:
        return bool(self.entered or self.cleared)


def on_event(config: SafeConfig, state: SafeState, event: Happened) -> Transition:
    """The safe state after `event`, and the steps that get there."""
    if event.vm not in config.watch:
        return Transition(state, ignored=f"VM '{event.vm}' is not watched")
    active = set(state.active)
    entered: list[tuple[str, str]] = []
    cleared: list[tuple[str, str]] = []
    trigger = _TRIGGER_OF.get(event.what)
    if trigger is not None:
        if trigger not in config.actions:
            return Transition(state, ignored=f"safe_state declares no {trigger}")
        if event.what == "heartbeat-missed" and event.phase in OPERATOR_PHASES:
            return Transition(state, ignored="stopped by an operator: its heartbeat is not missed")
        if (trigger, event.vm) in active:
            return Transition(state, ignored=f"{trigger} of '{event.vm}' is already in force")
        active.add((trigger, event.vm))
        entered.append((trigger, event.vm))
    else:
        for t in _CLEARED_BY[event.what]:
            if (t, event.vm) in active:
                active.discard((t, event.vm))
                cleared.append((t, event.vm))
        if not cleared:
            return Transition(state)
    wanted = _wanted(config, active)
    steps = _shed_steps(config, state.applied, wanted)
    steps += [
        Step("restart", vm)
        for t, vm in entered
        if t == "heartbeat_missed" and "restart" in config.actions[t]
    ]
    return Transition(
        SafeState(frozenset(active), wanted),
        tuple(steps),
        entered=tuple(f"{t}:{vm}" for t, vm in entered),
        cleared=tuple(f"{t}:{vm}" for t, vm in cleared),
    )


def adopted(
    config: SafeConfig,
    active: frozenset[tuple[str, str]],
    paused: frozenset[str],
    capped: frozenset[str],
) -> Transition:
    """Take over a safe state another supervisor left in force (`active`
    triggers; the VMs it `paused` and `capped`): triggers the spec no longer
    declares, or for VMs it no longer watches, are dropped (`cleared`), and
    the measures are brought to what the remaining ones ask for (all lifted
    when none remains). A VM held that the spec no longer sheds is let go
    whatever remains in force."""
    kept = frozenset((t, vm) for t, vm in active if t in config.actions and vm in config.watch)
    wanted = _wanted(config, kept)
    shed = frozenset(config.shed)
    applied = frozenset(["pause"] * bool(paused & shed) + ["cap"] * bool(capped & shed))
    strays = [Step("resume", vm) for vm in sorted(paused - shed)]
    strays += [Step("uncap", vm) for vm in sorted(capped - shed)]
    return Transition(
        SafeState(kept, wanted),
        tuple(strays + _shed_steps(config, applied, wanted)),
        cleared=tuple(f"{t}:{vm}" for t, vm in sorted(active - kept)),
    )


def lifted(config: SafeConfig, state: SafeState) -> Transition:
    """Back to normal whatever is active (nobody would lift it later)."""
    return Transition(
        SafeState(),
        tuple(_shed_steps(config, state.applied, frozenset())),
        cleared=tuple(state.reasons()),
    )


def _wanted(
    config: SafeConfig, active: set[tuple[str, str]] | frozenset[tuple[str, str]]
) -> frozenset[str]:
    """The shed measures the active triggers ask for."""
    return frozenset(
        a for t, _ in active for a in config.actions.get(t, ()) if a in ("pause", "cap")
    )


def _shed_steps(config: SafeConfig, applied: frozenset[str], wanted: frozenset[str]) -> list[Step]:
    """Measures to lift first (resume before uncap), then those to apply
    (cap before pause: a VM resumed later runs capped at once)."""
    steps: list[Step] = []
    if "pause" in applied - wanted:
        steps += [Step("resume", vm) for vm in config.shed]
    if "cap" in applied - wanted:
        steps += [Step("uncap", vm) for vm in config.shed]
    if "cap" in wanted - applied:
        steps += [Step("cap", vm, config.cap) for vm in config.shed]
    if "pause" in wanted - applied:
        steps += [Step("pause", vm) for vm in config.shed]
    return steps


def capped_quota(period_us: int, quota_us: int | None, limit_pct: float | None) -> int:
    """The vCPU quota of a VM the safe state caps to `limit_pct` % of a CPU:
    never more than the VM's own quota (a cap frees CPU, it never gives a VM
    more than its `cpu.limit`), never under 1 ms a period (cgroup minimum)."""
    cap = max(1000, int(period_us * (limit_pct or 100) / 100))
    if quota_us is not None and quota_us > 0:
        cap = min(cap, quota_us)
    return cap
