"""The supervisor's restart and recover workers, one thread per decision.

A restart starts a stopped VM the way `kvmctl apply` does (start paused,
real-time preparation, resume, wait for readiness), after its backoff and once
every VM it depends on is ready again; a recover waits for a VM the
hypervisor reset in place to be ready again. A worker stands down when a newer
decision on its VM (its epoch) or the supervisor's stop overtakes it, and
reports a failure back to the main thread as a `Note`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvmctl.adapters.events_watch import EventWatch
from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.cockpit import readiness
from kvmctl.cockpit.applier import session_applier
from kvmctl.cockpit.outcome import VmOutcome
from kvmctl.errors import HostError, KvmctlError
from kvmctl.host import threads
from kvmctl.planner.diff import Action
from kvmctl.session import open_session
from kvmctl.state.setlock import set_lock
from kvmctl.supervise.board import Board, VmWatch
from kvmctl.supervise.policy import HUNG, Decision, waiting_on


@dataclass(frozen=True)
class Note:
    """A worker's report, handled on the main thread like an event."""

    vm: str
    epoch: int
    cause: str


class Workers:
    def __init__(
        self,
        board: Board,
        watch: EventWatch,
        report: Callable[[Note], None],
        stop: threading.Event,
        spec_path: Path,
        uri: str,
        host: str | None,
    ):
        self.board = board
        self.watch = watch
        self.report = report
        self._stop = stop
        self.spec_path = spec_path
        self.uri = uri
        self.host = host
        self._workers: list[threading.Thread] = []

    def spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except Exception as err:  # noqa: BLE001 - a worker must not die silently
                self.board.log("worker-error", worker=name, error=f"{type(err).__name__}: {err}")

        t = threading.Thread(target=run, name=name, daemon=True)
        self._workers = [x for x in self._workers if x.is_alive()] + [t]
        t.start()

    def _current(self, w: VmWatch, epoch: int) -> bool:
        return not self._stop.is_set() and w.epoch == epoch

    def restart(
        self, w: VmWatch, epoch: int, decision: Decision, cause: str, decided: float
    ) -> None:
        """`decided`: when the decision was taken (time.monotonic()), which the
        VM's boot deadline counts from."""
        if decision.delay and self._stop.wait(decision.delay):
            return
        if not self._wait_dependencies(w, epoch) or not self._current(w, epoch):
            return
        self.board.set_phase(w, "restarting", ready=False)
        self.board.log("restarting", w.name, cause=cause)
        try:
            with self._set_lock(w, epoch):
                if not self._current(w, epoch):
                    return
                outcome = self._start(w, hung=cause in HUNG, since=decided)
        except KvmctlError as err:
            if not self._current(w, epoch):
                return
            self.board.log("restart-failed", w.name, error=str(err))
            self.report(Note(w.name, epoch, "start-failed"))
            return
        if outcome is None:
            return
        pid = threads.qemu_pid(w.domain)
        # History first: whoever reads the "restarted" line finds the figure recorded.
        readiness.remember(self.board.set_name, [outcome], "restart")
        self.board.log(
            "restarted",
            w.name,
            action=outcome.action,
            ready_s=_rounded(outcome.ready_seconds),
            since_decision_s=_rounded(outcome.since_apply_s),
            deadline_s=outcome.deadline_s,
            deadline_met=outcome.deadline_met,
            boot=outcome.boot,  # warm or cold; the notes say why cold
            warm_start_failed=outcome.fallback,
            notes=outcome.notes,
            pid=pid,
        )
        if self._current(w, epoch):
            self.board.set_phase(w, "running", ready=True)

    def _wait_dependencies(self, w: VmWatch, epoch: int) -> bool:
        said: list[str] = []
        vms = self.board.vms
        with self.board.lock:
            while self._current(w, epoch):
                ready = {n: v.ready and v.phase == "running" for n, v in vms.items()}
                missing = waiting_on([d for d in w.depends_on if d in vms], ready)
                if not missing:
                    if said:
                        self.board.log("dependencies-ready", w.name, depends_on=w.depends_on)
                    return True
                if missing != said:
                    self.board.log("waiting-for-dependency", w.name, waiting_on=missing)
                    said = missing
                self.board.changed.wait(1.0)
        return False

    @contextmanager
    def _set_lock(self, w: VmWatch, epoch: int) -> Iterator[None]:
        """Restarts change the set like apply does: never at the same time as
        an apply or destroy of it."""
        said = False
        while True:
            try:
                with set_lock(self.board.set_name):
                    yield
                return
            except HostError as err:
                if "is changing cockpit" not in str(err):
                    raise
                if not said:
                    self.board.log("waiting-for-set-lock", w.name, reason=str(err))
                    said = True
                if self._stop.wait(1.0) or not self._current(w, epoch):
                    raise KvmctlError("supervisor stopping") from None

    def _start(self, w: VmWatch, hung: bool, since: float) -> VmOutcome | None:
        """Start a defined, stopped domain the way `kvmctl apply` does, from the
        spec as it is now; `hung`: it runs but never became ready, so it is
        powered off first; `since`: when its boot deadline started counting.
        None when there was nothing to start."""
        session = open_session(self.spec_path, self.uri, host=self.host)
        virt = session.virt
        assert virt is not None
        try:
            plan = session.plan
            vm_plan = plan.vms.get(w.name)
            if vm_plan is None:
                self.board.log("not-restarted", w.name, reason="no longer in the spec")
                self.board.set_phase(w, "down", ready=False)
                return None
            dom = virt.lookup(w.domain)
            if dom is None:
                self.board.log("not-restarted", w.name, reason="domain no longer defined")
                self.board.set_phase(w, "absent", ready=False)
                return None
            if dom.isActive() and hung:
                virt.stop(w.domain)
            elif dom.isActive():
                self.board.log("not-restarted", w.name, reason="already running")
                return VmOutcome(w.name, "unchanged")
            # Only this VM's start: bridges, and regions the spec no longer
            # declares (still mapped by running members), wait for `kvmctl apply`.
            single = replace(
                plan,
                actions=[Action("start", w.name, w.domain, ("restart",))],
                bridge_actions=[],
                channels=replace(plan.channels, stale=()),
            )
            with Netlink() if not session.remote else nullcontext() as nl:
                result = session_applier(
                    session,
                    single,
                    nl,
                    lambda vm, what: self.board.log("progress", vm, what=what),
                    since,
                ).run()
            return result.outcomes[w.name]
        finally:
            session.close()

    def recover(self, w: VmWatch, epoch: int, since: float) -> None:
        """The hypervisor reset the VM in place: wait for it to be ready again."""
        conn = self.watch.conn
        if conn is None:
            return
        try:
            with ReadyWatch(conn, w.domain, w.probe) as watch:
                watch.wait(w.ready_timeout)
        except NotReady as err:
            if not self._current(w, epoch):
                return
            if not _alive(conn) or conn is not self.watch.conn:
                # libvirtd went away meanwhile: the reconcile after reconnecting
                # watches again; the guest is not to blame.
                self.board.log("recover-interrupted", w.name, error=str(err))
                return
            self.board.log("not-ready", w.name, error=str(err))
            self.report(Note(w.name, epoch, "not-ready"))
            return
        except Exception as err:  # noqa: BLE001 - libvirt gone: reconcile decides
            if self._current(w, epoch):
                self.board.log("recover-interrupted", w.name, error=str(err))
            return
        if self._current(w, epoch):
            self.board.log("recovered", w.name, ready_s=round(time.time() - since, 2))
            self.board.set_phase(w, "running", ready=True)


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 2)


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive() == 1)
    except Exception:  # noqa: BLE001 - a closed connection raises
        return False
