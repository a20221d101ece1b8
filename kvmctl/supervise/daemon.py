"""Keep a cockpit's VMs running: the `kvmctl supervise` process.

One libvirt connection with keepalive, subscribed to lifecycle, watchdog and
reboot events of the set's domains. When a VM stops or is reset, the restart
policy of its spec (`kvmctl.supervise.policy.decide`) says what to do:

- restart it (the same path as `kvmctl apply` takes for a defined domain:
  start paused, real-time preparation, resume, wait for readiness), after a
  backoff, and only once every VM it depends on is ready again;
- wait for a VM the hypervisor reset in place (watchdog, panic, reboot) to be
  ready again, and restart it when it is not within its ready timeout;
- give up once `max` restarts happened within `window`, and say so;
- leave alone what an operator stopped.

Each VM is handled on its own: nothing done for one VM touches another.
When libvirtd goes away the supervisor reconnects, then compares what runs
with what it knew, so a VM that died meanwhile is restarted once, and no VM
twice. Every decision is one JSON line on stdout; the state of every VM is
kept in /run/kvmctl/supervise/<set>.json (KVMCTL_SUPERVISE_DIR overrides),
which `kvmctl.state.supervisor.supervisor_state()` reads back for `kvmctl status`.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import IO

from kvmctl.adapters.events_watch import DomainEvent, DomainState, EventWatch
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.planner.plan import domain_name
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state.paths import supervise_dir
from kvmctl.state.setlock import pid_lock
from kvmctl.state.supervisor import state_path
from kvmctl.supervise.board import Board, VmWatch
from kvmctl.supervise.events import EventHandler
from kvmctl.supervise.heartbeat import HeartbeatNote
from kvmctl.supervise.policy import RestartPolicy, stop_cause
from kvmctl.supervise.safety import ReadyNote, Safety
from kvmctl.supervise.workers import Note, Workers

_FAILED_SHUTOFF = {"crashed", "failed"}


class Supervisor:
    """The process: its connection and main loop. The pieces it wires share
    the `Board` (what is known of each VM): the `EventHandler` decides on each
    event, `Workers` restart and recover VMs in threads of their own."""

    def __init__(
        self,
        spec_path: Path,
        uri: str,
        *,
        host: str | None = None,
        out: IO[str] | None = None,
        directory: Path | None = None,
        backoff: float = 1.0,
        backoff_max: float = 30.0,
    ):
        self.spec_path = Path(spec_path)
        self.uri = uri
        self.host = host  # the spec's host: whose VMs are watched (None: those without)
        self.directory = directory or supervise_dir()
        self.spec: Cockpit = load_spec(self.spec_path)
        self.set_name = self.spec.name
        vms: dict[str, VmWatch] = {}
        for name, vm in self.spec.vms.items():
            if vm.host != host:
                continue  # another host's supervisor watches it
            r = vm.restart
            vms[name] = VmWatch(
                name=name,
                domain=domain_name(self.set_name, name),
                policy=RestartPolicy(r.policy, r.max, r.window, backoff, backoff_max),
                depends_on=list(vm.depends_on),
                probe=vm.ready.probe,
                ready_timeout=vm.ready.timeout,
            )
        if not vms:
            where = f"on host '{host}'" if host else "without host:"
            raise UsageError(
                f"cockpit '{self.set_name}' has no VMs {where} to supervise (--host NAME picks "
                "the VMs of one host)"
            )
        self.board = Board(
            self.set_name, self.spec_path, uri, vms, out or sys.stdout, self.directory
        )
        self.events: queue.Queue[DomainEvent | Note | HeartbeatNote | ReadyNote] = queue.Queue()
        self.watch = EventWatch(uri, self.events.put, lambda name: name in self.board.by_domain)
        self._stop = threading.Event()
        self.workers = Workers(
            self.board, self.watch, self.events.put, self._stop, self.spec_path, uri, host
        )
        self.handler = EventHandler(self.board, self.watch, self.workers)
        self.safety = Safety(
            self.spec, self.board, self.watch, self.handler, self.events.put, self._stop, uri
        )

    # --- running -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the supervisor to exit (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        with self._instance_lock():
            self.board.log(
                "supervising",
                pid=os.getpid(),
                uri=self.uri,
                spec=str(self.spec_path),
                state_file=str(state_path(self.set_name, self.directory)),
                vms={
                    w.name: {
                        "domain": w.domain,
                        "policy": w.policy.policy,
                        "max": w.policy.max,
                        "window_s": w.policy.window,
                        "depends_on": w.depends_on,
                    }
                    for w in self.board.vms.values()
                },
            )
            self.watch.connect()
            self.board.connected = True
            self.board.log("connected", uri=self.uri)
            self.safety.adopt_left_state(self.directory)
            self._reconcile(initial=True)
            for listener in self.safety.listeners:
                self.workers.spawn(f"heartbeat-{listener.vm}", listener.run)
            written = time.monotonic()
            try:
                while not self._stop.is_set():
                    try:
                        item = self.events.get(timeout=0.5)
                    except queue.Empty:
                        item = None
                    if item is not None:
                        self._handle(item)
                    if self.safety.listeners and time.monotonic() - written >= 1.0:
                        # Readers work out a heartbeat's age from its last beat.
                        self.board.write_state()
                        written = time.monotonic()
            finally:
                self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self.safety.stopping()
        busy = [w.name for w in self.board.vms.values() if w.phase in ("waiting", "restarting")]
        self.board.log("stopping", restarts_in_flight=busy)
        self.watch.close()
        self.board.connected = False
        self.board.write_state(active=False)
        self.board.log("stopped")

    def _instance_lock(self) -> AbstractContextManager[None]:
        """One supervisor per set on this host: a second one would restart
        every VM twice."""
        return pid_lock(
            self.directory / f"{self.set_name}.lock",
            lambda pid: f"cockpit '{self.set_name}' is already supervised (pid {pid}) on this host",
        )

    def _handle(self, item: DomainEvent | Note | HeartbeatNote | ReadyNote) -> None:
        if isinstance(item, HeartbeatNote | ReadyNote):
            self.safety.heard(item)
            return
        if isinstance(item, Note):
            noted = self.board.vms[item.vm]
            if item.epoch == noted.epoch:
                self.handler.decide(noted, item.cause)
            return
        if item.kind == "disconnected":
            self._reconnect(item.detail)
            return
        self.handler.handle(item)

    # --- reconnecting ------------------------------------------------------------------

    def _reconnect(self, reason: str) -> None:
        self.board.connected = False
        self.board.log("disconnected", reason=reason)
        self.board.write_state()
        self.watch.close()
        delay = 0.5
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                self.watch.connect()
            except KvmctlError:
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.board.connected = True
            self.board.log("reconnected", after_s=round(time.monotonic() - t0, 1))
            self._reconcile(initial=False)
            return

    def _reconcile(self, initial: bool) -> None:
        """Compare what runs with what is known: events missed while not
        connected (or before the supervisor started) are acted on once."""
        try:
            states = self.watch.states()
        except KvmctlError as err:
            self.board.log("reconcile-failed", error=str(err))
            return
        set_phase = self.board.set_phase
        for w in self.board.vms.values():
            st: DomainState | None = states.get(w.domain)
            self.board.log(
                "observed",
                w.name,
                state=st.state if st else "absent",
                reason=st.reason if st else "",
                phase=w.phase,
            )
            if w.phase in ("waiting", "restarting"):
                continue  # its worker goes on
            if st is None:
                set_phase(w, "absent", ready=False)
            elif st.active and w.phase == "recovering":
                # Its readiness watch died with the old connection: watch anew.
                with self.board.lock:
                    w.epoch += 1
                    epoch = w.epoch
                recover = partial(self.workers.recover, w, epoch, time.time())
                self.workers.spawn(f"recover-{w.name}", recover)
            elif st.active:
                set_phase(w, "running", ready=True)
            elif w.phase == "gave-up":
                continue
            elif initial:
                if st.reason in _FAILED_SHUTOFF:
                    self.handler.decide(w, stop_cause(st.reason))
                else:
                    set_phase(w, "down", ready=False)
            elif w.phase in ("running", "recovering"):
                # It was running when we lost sight of it.
                self.handler.decide(w, stop_cause(st.reason))
            else:
                set_phase(w, "down", ready=False)
        self.board.write_state()
