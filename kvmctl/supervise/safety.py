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

import libvirt

from kvmctl.adapters.events_watch import EventWatch
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.errors import KvmctlError
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

# How long a taken-over VM's probe is asked before the reconcile watches it.
RECHECK_S = 5.0


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
        """A predecessor that stopped without lifting its safe state (killed,
        or not connected to libvirtd as it stopped) left shed VMs paused or
        capped: take them over. Without a `safe_state:` in the spec any more,
        they are let go at once."""
        left = supervisor_state(self.board.set_name, directory)
        if not left or left["alive"]:
            return
        safe = left.get("safe_state") or {}
        if not (left.get("active") or safe.get("paused") or safe.get("uncapped")):
            return  # a clean stop lifts its measures; a failed lift keeps its records
        keeper = self.keeper or SafeStateKeeper(
            self.board, self.watch, SafeConfig((), (), None, {}), lambda w, cause: None
        )
        keeper.adopt(safe, heard=set(self.board.heartbeats))
        held = keeper.summary()
        if self.keeper is None and not held["paused"] and not held["uncapped"]:
            self.board.safe = None  # nothing left to keep for a set without a safe state
        for trigger, vm in keeper.state.active:
            view = self.board.heartbeats.get(vm)
            w = self.board.vms.get(vm)
            if trigger == "heartbeat_missed" and view is not None:
                view.missed = True  # its next beat is the resume that clears it
            elif trigger in ("crashed", "gave_up") and w is not None:
                self._recheck(w)

    def _recheck(self, w: VmWatch) -> None:
        """A taken-over crash or spent budget clears when the VM is ready, which
        the predecessor may not have seen (killed while the VM was booting).
        A running domain whose probe does not answer now is left to the first
        reconcile to watch (`recovering`) rather than taken for ready. Not
        with a serial probe: a guest that booted prints its line no more."""
        conn = self.watch.conn
        if conn is None or w.probe.startswith("serial:"):
            return
        try:
            state = self.watch.states().get(w.domain)
        except KvmctlError:
            return  # the reconcile decides
        if state is None or not state.active:
            return
        try:
            with ReadyWatch(conn, w.domain, w.probe) as watch:
                watch.restored().wait(RECHECK_S)  # a ready guest answers at once
        except (NotReady, libvirt.libvirtError):
            w.phase = "recovering"

    def heard(self, note: HeartbeatNote | ReadyNote) -> None:
        if isinstance(note, ReadyNote):
            if self.keeper is not None:
                self.keeper.on(Happened("ready", note.vm))
                self.keeper.reimpose(note.vm)
            return
        w = self.board.vms[note.vm]
        self.board.log(
            f"heartbeat-{note.kind}",
            note.vm,
            age_s=note.age_s,
            last_beat=note.last_beat,
            phase=w.phase,
        )
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
