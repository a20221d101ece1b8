"""The declared safe state put into force: `kvmctl.supervise.safestate`
decides, this applies its steps through libvirt and logs each decision and
step. Runs on the supervisor's main thread only.

pause and resume act on the shed VMs' running domains; cap writes a live vCPU
quota and uncap puts back the quota that was in force before; restart asks
the supervisor's own restart path (the restart policy decides, as for any
failure, so a spent budget gives up rather than restarting).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from kvmctl.adapters.events_watch import EventWatch
from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.errors import KvmctlError
from kvmctl.supervise.board import Board, VmWatch
from kvmctl.supervise.safestate import (
    Happened,
    SafeConfig,
    SafeState,
    Step,
    Transition,
    adopted,
    capped_quota,
    lifted,
    on_event,
)

# The cgroup period a cap is written against when the domain reports none.
DEFAULT_PERIOD_US = 100_000


class SafeStateKeeper:
    def __init__(
        self,
        board: Board,
        watch: EventWatch,
        config: SafeConfig,
        restart: Callable[[VmWatch, str], None],
    ):
        self.board = board
        self.watch = watch
        self.config = config
        self.restart = restart
        self.state = SafeState()
        self.since: float | None = None  # when the set became degraded
        self._uncapped: dict[str, tuple[int | None, int | None]] = {}  # vm -> (period, quota)
        self._paused: set[str] = set()  # VMs this keeper paused
        board.safe = self.summary

    def summary(self) -> dict[str, object]:
        """The safe state as the state file keeps it."""
        return {
            "degraded": self.state.degraded,
            "since": self.since,
            "active": self.state.reasons(),
            "applied": sorted(self.state.applied),
            "shed": list(self.config.shed),
            # What a successor needs to undo these measures if this process
            # dies without lifting them (see adopt).
            "paused": sorted(self._paused),
            "uncapped": {vm: list(v) for vm, v in sorted(self._uncapped.items())},
        }

    def adopt(self, left: Mapping[str, Any], heard: Collection[str]) -> None:
        """Take over the safe state a supervisor of this set left in force
        when it stopped without lifting it (killed, OOM, or not connected to
        libvirtd as it stopped): its measures are undone by this one once
        the triggers clear, not never. What the spec no longer declares is
        dropped, and the measures brought in line at once. A missed heartbeat
        that no listener here hears (`heard`) could never resume: dropped."""
        found = frozenset(
            (trigger, vm)
            for reason in left.get("active") or []
            for trigger, _, vm in [str(reason).partition(":")]
        )
        unheard = {(t, vm) for t, vm in found if t == "heartbeat_missed" and vm not in heard}
        active = found - unheard
        # Only a VM that can have been shed: one of this set that is not watched.
        vms = set(self.board.vms) - set(self.config.watch)
        self._paused = {str(vm) for vm in left.get("paused") or [] if vm in vms}
        self._uncapped = {
            str(vm): (_int_or_none(v[0]), _int_or_none(v[1]))
            for vm, v in (left.get("uncapped") or {}).items()
            if vm in vms and isinstance(v, list) and len(v) == 2
        }
        if not active and not self._paused and not self._uncapped:
            return
        t = adopted(self.config, active, frozenset(self._paused), frozenset(self._uncapped))
        self.board.log(
            "safe-state-adopted",
            active=t.state.reasons(),
            dropped=sorted([*t.cleared, *(f"{trig}:{vm}" for trig, vm in unheard)]),
            paused=sorted(self._paused),
            capped=sorted(self._uncapped),
            actions=[s.as_dict() for s in t.steps],
        )
        since = left.get("since")
        if t.state.degraded and isinstance(since, int | float):
            self.since = float(since)
        self._enter(t, None, {})

    def reimpose(self, vm: str) -> None:
        """A shed VM that is running and ready again (restarted while the safe
        state is in force) gets the measures in force, as the others have."""
        if vm not in self.config.shed or not self.state.applied:
            return
        if "cap" in self.state.applied:  # cap first, as on entry
            self._apply(Step("cap", vm, self.config.cap))
        if "pause" in self.state.applied:
            self._apply(Step("pause", vm))
        self.board.write_state()

    def on(self, event: Happened, **detail: object) -> None:
        t = on_event(self.config, self.state, event)
        if t.ignored and event.what in ("heartbeat-missed", "failed", "gave-up"):
            self.board.log("safe-state-unchanged", event.vm, on=event.what, reason=t.ignored)
        if not t.changed:
            return
        self._enter(t, event, detail)

    def lift(self, reason: str) -> None:
        """Return to normal whatever is active (the supervisor is stopping:
        nobody would lift the measures afterwards)."""
        if not self.state.degraded and not self.state.applied:
            return
        t = lifted(self.config, self.state)
        self.board.log("safe-state-lifted", reason=reason, cleared=list(t.cleared))
        self._enter(t, None, {})

    def _enter(self, t: Transition, event: Happened | None, detail: dict[str, object]) -> None:
        self.state = t.state
        if t.state.degraded and self.since is None:
            self.since = time.time()
        elif not t.state.degraded:
            self.since = None
        if event is not None:
            self.board.log(
                "safe-state",
                event.vm,
                on=event.what,
                entered=list(t.entered),
                cleared=list(t.cleared),
                degraded=t.state.degraded,
                active=t.state.reasons(),
                actions=[s.as_dict() for s in t.steps],
                **detail,
            )
        for step in t.steps:
            self._apply(step)
        self.board.write_state()

    def _apply(self, step: Step) -> None:
        what = {k: v for k, v in step.as_dict().items() if k != "vm"}
        watch = self.board.vms.get(step.vm)
        try:
            skipped = "not supervised here" if watch is None else self._do(step, watch)
        except KvmctlError as err:
            self.board.log("safe-state-step", step.vm, **what, done=False, error=str(err))
            return
        if skipped:
            self.board.log("safe-state-step", step.vm, **what, done=False, reason=skipped)
        else:
            self.board.log("safe-state-step", step.vm, **what, done=True)

    def _do(self, step: Step, w: VmWatch) -> str | None:
        """Apply one step; None when done, else why nothing was done."""
        if step.kind == "restart":
            if w.phase != "running":
                return f"{w.phase} already"
            self.restart(w, "heartbeat")
            return None
        conn = self.watch.conn
        if conn is None:
            raise KvmctlError("not connected to libvirtd")
        virt = Virt(conn)
        state = self.watch.states().get(w.domain)
        if state is None or not state.active:
            return "not running"
        # Only what this keeper did is undone: a VM that was not running when
        # it was paused or capped keeps what apply, the supervisor or an
        # operator gave it since.
        if step.kind == "pause":
            if state.state == "paused":
                return "paused already"  # by an operator, or before this keeper took over
            # Recorded first: a supervisor killed during the call leaves its
            # successor a record to undo (a resume of a running VM only fails).
            self._paused.add(w.name)
            self.board.write_state()
            try:
                SnapshotOps(virt).suspend(w.domain)
            except KvmctlError:
                self._paused.discard(w.name)
                raise
        elif step.kind == "resume":
            if w.name not in self._paused:
                return "not paused by the safe state"
            SnapshotOps(virt).resume(w.domain)
            self._paused.discard(w.name)
        elif step.kind == "cap":
            period, quota = virt.vcpu_cap(w.domain)
            self._uncapped.setdefault(w.name, (period, quota))
            self.board.write_state()  # the quota to put back, before it is changed
            use = period or DEFAULT_PERIOD_US
            virt.set_vcpu_cap(w.domain, use, capped_quota(use, quota, step.limit))
        elif step.kind == "uncap":
            if w.name not in self._uncapped:
                return "not capped by the safe state"
            period, quota = self._uncapped.pop(w.name)
            virt.set_vcpu_cap(w.domain, period, quota if quota is not None and quota > 0 else None)
        return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
