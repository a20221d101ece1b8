"""Heartbeats and the declared safe state, wired into one supervisor.

The supervisor's main thread hands this what concerns them: a heartbeat
listener's report, a VM ready again (`ReadyNote`, from whichever thread saw
it) and each restart-policy decision. Heartbeat listeners run in threads of
their own (kvmctl.supervise.heartbeat); the keeper
(kvmctl.supervise.safe_apply) acts on the main thread only.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmctl.adapters.events_watch import EventWatch
from kvmctl.planner.channels import serial_port
from kvmctl.planner.hosts import is_remote
from kvmctl.spec import Cockpit
from kvmctl.spec.safestate import HEARTBEAT_CHANNEL
from kvmctl.state.paths import channel_dir
from kvmctl.state.supervisor import supervisor_state
from kvmctl.supervise.board import Board, VmWatch
from kvmctl.supervise.events import EventHandler
from kvmctl.supervise.heartbeat import HeartbeatListener, HeartbeatNote, HeartbeatView
from kvmctl.supervise.policy import FAILURES, Decision
from kvmctl.supervise.safe_apply import SafeStateKeeper
from kvmctl.supervise.safestate import Happened, SafeConfig, What


@dataclass(frozen=True)
class ReadyNote:
    """A VM is running and ready again (from whichever thread saw it)."""

    vm: str


class Safety:
    def __init__(
        self,
        spec: Cockpit,
        board: Board,
        watch: EventWatch,
        handler: EventHandler,
        report: Callable[[HeartbeatNote | ReadyNote], None],
        stop: threading.Event,
        uri: str,
    ):
        self.board = board
        self.watch = watch
        self.report = report
        self.listeners = self._listeners(spec, uri, stop)
        self.keeper: SafeStateKeeper | None = None
        config = SafeConfig.from_spec(spec)
        if config is not None:
            self.keeper = SafeStateKeeper(board, watch, config, handler.decide)
            handler.on_decision = self._decided
            board.on_phase = self._phase_changed

    def _listeners(self, spec: Cockpit, uri: str, stop: threading.Event) -> list[HeartbeatListener]:
        """A listener per supervised VM with a heartbeat, on the host end of
        its heartbeat channel (planned as in kvmctl.planner.channels)."""
        listeners = []
        for name in self.board.vms:
            beat = spec.vms[name].heartbeat
            if beat is None:
                continue
            if is_remote(uri):
                # The host end is a socket file on the VM's host: only a
                # supervisor running there can listen to it.
                self.board.log("heartbeat-unheard", name, reason="supervised over " + uri)
                continue
            port = serial_port(str(channel_dir()), spec.name, name, HEARTBEAT_CHANNEL)
            view = HeartbeatView(beat.period, beat.deadline, port.socket)
            self.board.heartbeats[name] = view
            listeners.append(HeartbeatListener(name, view, self.report, stop))
        return listeners

    def adopt_left_state(self, directory: Path) -> None:
        """A predecessor that died without lifting its safe state (its state
        file still says active) left measures in force: take them over."""
        left = supervisor_state(self.board.set_name, directory)
        if self.keeper is None or not left or not left.get("active") or left["alive"]:
            return
        self.keeper.adopt(left.get("safe_state") or {})
        for trigger, vm in self.keeper.state.active:
            view = self.board.heartbeats.get(vm)
            if trigger == "heartbeat_missed" and view is not None:
                view.missed = True  # its next beat is the resume that clears it

    def heard(self, note: HeartbeatNote | ReadyNote) -> None:
        if isinstance(note, ReadyNote):
            if self.keeper is not None:
                self.keeper.on(Happened("ready", note.vm))
                self.keeper.reimpose(note.vm)
            return
        w = self.board.vms[note.vm]
        self.board.log(f"heartbeat-{note.kind}", note.vm, age_s=note.age_s, phase=w.phase)
        if self.keeper is not None:
            what: What = "heartbeat-missed" if note.kind == "missed" else "heartbeat-resumed"
            self.keeper.on(Happened(what, note.vm, w.phase), age_s=note.age_s)
        else:
            self.board.write_state()

    def stopping(self) -> None:
        if self.keeper is not None and self.watch.conn is not None:
            self.keeper.lift("the supervisor is stopping")

    def _decided(self, w: VmWatch, cause: str, d: Decision) -> None:
        assert self.keeper is not None
        if d.kind == "give-up":
            self.keeper.on(Happened("gave-up", w.name, w.phase), cause=cause)
        elif cause in FAILURES and cause != "heartbeat":
            self.keeper.on(Happened("failed", w.name, w.phase), cause=cause)

    def _phase_changed(self, w: VmWatch) -> None:
        """From any thread: the main thread hears of a VM ready again."""
        if w.phase == "running" and w.ready:
            self.report(ReadyNote(w.name))
