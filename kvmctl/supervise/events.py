"""What each domain event means for its VM, and the restart policy's
decision on it acted upon (`kvmctl.supervise.policy.decide` decides).

libvirt reports a failure as a sequence: a watchdog or a guest panic comes
first, then the stop it causes, or a reboot when the hypervisor resets the
VM in place. The handler names the whole sequence by its first event, so a
panic is a panic and not a generic crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from kvmctl.adapters.events_watch import DomainEvent, EventWatch
from kvmctl.adapters.virt import Virt
from kvmctl.errors import KvmctlError
from kvmctl.planner.domain import on_crash_for
from kvmctl.supervise.board import Board, VmWatch
from kvmctl.supervise.policy import Decision, decide, stop_cause
from kvmctl.supervise.workers import Workers


class EventHandler:
    def __init__(self, board: Board, watch: EventWatch, workers: Workers):
        self.board = board
        self.watch = watch
        self.workers = workers
        # Told of every decision (the safe state acts on failures and give-ups).
        self.on_decision: Callable[[VmWatch, str, Decision], None] | None = None

    def handle(self, item: DomainEvent) -> None:
        w = self.board.by_domain.get(item.domain)
        if w is None:
            return
        self.board.log("domain-event", w.name, kind=item.kind, detail=item.detail, phase=w.phase)
        kind = item.kind
        if kind == "stopped":
            if w.phase in ("waiting", "restarting", "gave-up"):
                return  # a restart in flight handles its own failure
            cause = stop_cause(item.detail)
            if cause == "shutdown" and time.time() - w.pending_watchdog < 10:
                cause = "watchdog"  # the watchdog's poweroff/shutdown action
            elif cause == "crashed" and time.time() - w.pending_panic < 10:
                cause = "panicked"  # on_crash=destroy after a pvpanic report
            self.decide(w, cause)
        elif kind == "crashed":
            if on_crash_for(w.policy.policy) == "restart":
                # libvirt resets it in place (same QEMU): wait for it to be ready.
                if w.phase not in ("recovering", "gave-up"):
                    self.decide(w, "panicked", in_place=True)
            else:
                # on_crash=destroy: the stopped event that follows decides.
                w.pending_panic = item.at
        elif kind == "watchdog":
            if item.detail == "reset":
                if w.phase != "gave-up":
                    self.decide(w, "watchdog", in_place=True)
            elif item.detail in ("poweroff", "shutdown"):
                w.pending_watchdog = item.at
        elif kind == "reboot":
            if w.phase not in ("recovering", "gave-up", "waiting", "restarting"):
                self.decide(w, "reboot", in_place=True)
        elif kind in ("started", "resumed"):
            if w.phase in ("unknown", "down", "gave-up", "absent"):
                # Started by someone else (kvmctl apply, virsh start): supervise
                # it afresh.
                with self.board.lock:
                    w.history.clear()
                    w.epoch += 1
                self.board.log("running", w.name, reason="started outside the supervisor")
                self.board.set_phase(w, "running", ready=True)
        elif kind == "undefined":
            with self.board.lock:
                w.epoch += 1
            self.board.set_phase(w, "absent", ready=False)

    def decide(self, w: VmWatch, cause: str, *, in_place: bool = False) -> None:
        now = time.time()
        decided = time.monotonic()  # a restart's boot deadline counts from here
        with self.board.lock:
            d = decide(w.policy, cause, w.history, now, in_place=in_place)
            w.epoch += 1
            epoch = w.epoch
            w.last_cause = cause
            if d.counts:
                w.history.append(now)
                if in_place:
                    w.resets += 1
                else:
                    w.restarts += 1
            elif d.kind == "recover":
                w.resets += 1
        self.board.log("decision", w.name, cause=cause, in_place=in_place, **d.as_dict())
        if self.on_decision is not None:
            self.on_decision(w, cause, d)
        if d.kind == "restart":
            self.board.set_phase(w, "waiting", ready=False)
            self.workers.spawn(
                f"restart-{w.name}", lambda: self.workers.restart(w, epoch, d, cause, decided)
            )
        elif d.kind == "recover":
            self.board.set_phase(w, "recovering", ready=False)
            self.workers.spawn(f"recover-{w.name}", lambda: self.workers.recover(w, epoch, now))
        elif d.kind == "give-up":
            self.board.set_phase(w, "gave-up", ready=False)
            self._power_off_after_giving_up(w)
        else:
            active = self._active(w.domain)
            self.board.set_phase(w, "running" if active else "down", ready=active)

    def _power_off_after_giving_up(self, w: VmWatch) -> None:
        """A VM the hypervisor keeps resetting in place would keep failing (and
        eating CPU): once given up it is powered off."""
        conn = self.watch.conn
        if conn is None or not self._active(w.domain):
            self.board.log("gave-up", w.name, state="shut off")
            return
        try:
            Virt(conn).stop(w.domain)
            self.board.log("gave-up", w.name, state="powered off")
        except KvmctlError as err:
            self.board.log("gave-up", w.name, state="running", error=str(err))

    def _active(self, domain: str) -> bool:
        try:
            st = self.watch.states().get(domain)
        except KvmctlError:
            return False
        return st is not None and st.active
