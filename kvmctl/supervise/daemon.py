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

import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

from kvmctl.adapters.events_watch import DomainEvent, DomainState, EventWatch
from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit.applier import Applier, VmOutcome
from kvmctl.errors import HostError, KvmctlError, UsageError
from kvmctl.host import threads
from kvmctl.planner.diff import Action
from kvmctl.planner.domain import on_crash_for
from kvmctl.planner.plan import domain_name
from kvmctl.session import open_session
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state.paths import supervise_dir
from kvmctl.state.setlock import pid_lock, set_lock
from kvmctl.state.statefile import write_atomic
from kvmctl.state.supervisor import state_path
from kvmctl.supervise.policy import Decision, RestartPolicy, decide, stop_cause, waiting_on

_FAILED_SHUTOFF = {"crashed", "failed"}


@dataclass
class VmWatch:
    """What the supervisor knows about one VM. Changed under Supervisor._lock."""

    name: str
    domain: str
    policy: RestartPolicy
    depends_on: list[str]
    probe: str
    ready_timeout: float
    phase: str = "unknown"  # running, recovering, waiting, restarting, down, gave-up, absent
    ready: bool = False
    history: list[float] = field(default_factory=list)  # times of counted restarts
    restarts: int = 0  # restarts the supervisor made (start of a stopped VM)
    resets: int = 0  # resets in place it saw (watchdog, panic, reboot)
    last_cause: str | None = None
    last_change: float = 0.0
    epoch: int = 0  # bumped by every decision: a worker of an older one stands down
    pending_watchdog: float = 0.0  # a watchdog fired: the stop that follows is a failure
    pending_panic: float = 0.0  # the guest panicked: the crashed stop that follows is that panic

    def as_dict(self, now: float) -> dict[str, Any]:
        recent = [t for t in self.history if now - t < self.policy.window]
        return {
            "domain": self.domain,
            "phase": self.phase,
            "ready": self.ready,
            "restarts": self.restarts,
            "resets": self.resets,
            "restarts_in_window": len(recent),
            "policy": self.policy.policy,
            "max": self.policy.max,
            "window_s": self.policy.window,
            "gave_up": self.phase == "gave-up",
            "last_cause": self.last_cause,
            "last_change": self.last_change,
        }


@dataclass(frozen=True)
class _Note:
    """A worker's report, handled on the main thread like an event."""

    vm: str
    epoch: int
    cause: str


class Supervisor:
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
        self.out = out or sys.stdout
        self.directory = directory or supervise_dir()
        self.spec: Cockpit = load_spec(self.spec_path)
        self.set_name = self.spec.name
        self.vms: dict[str, VmWatch] = {}
        for name, vm in self.spec.vms.items():
            if vm.host != host:
                continue  # another host's supervisor watches it
            r = vm.restart
            self.vms[name] = VmWatch(
                name=name,
                domain=domain_name(self.set_name, name),
                policy=RestartPolicy(r.policy, r.max, r.window, backoff, backoff_max),
                depends_on=list(vm.depends_on),
                probe=vm.ready.probe,
                ready_timeout=vm.ready.timeout,
            )
        if not self.vms:
            where = f"on host '{host}'" if host else "without host:"
            raise UsageError(
                f"cockpit '{self.set_name}' has no VMs {where} to supervise (--host NAME picks "
                "the VMs of one host)"
            )
        self.by_domain = {w.domain: w for w in self.vms.values()}
        self.events: queue.Queue[DomainEvent | _Note] = queue.Queue()
        self.watch = EventWatch(uri, self.events.put, lambda name: name in self.by_domain)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._out_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.started_at = time.time()
        self.connected = False

    # --- running -------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the supervisor to exit (safe from a signal handler)."""
        self._stop.set()

    def run(self) -> int:
        with self._instance_lock():
            self.log(
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
                    for w in self.vms.values()
                },
            )
            self.watch.connect()
            self.connected = True
            self.log("connected", uri=self.uri)
            self._reconcile(initial=True)
            try:
                while not self._stop.is_set():
                    try:
                        item = self.events.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    self._handle(item)
            finally:
                self._shutdown()
        return 0

    def _shutdown(self) -> None:
        busy = [w.name for w in self.vms.values() if w.phase in ("waiting", "restarting")]
        self.log("stopping", restarts_in_flight=busy)
        self.watch.close()
        self.connected = False
        self._write_state(active=False)
        self.log("stopped")

    def _instance_lock(self) -> AbstractContextManager[None]:
        """One supervisor per set on this host: a second one would restart
        every VM twice."""
        return pid_lock(
            self.directory / f"{self.set_name}.lock",
            lambda pid: f"cockpit '{self.set_name}' is already supervised (pid {pid}) on this host",
        )

    # --- output ----------------------------------------------------------------------

    def log(self, event: str, vm: str | None = None, **fields: Any) -> None:
        """One JSON line per decision or observation."""
        now = time.time()
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "ts": round(now, 3),
            "set": self.set_name,
            "event": event,
        }
        if vm is not None:
            record["vm"] = vm
        record.update(fields)
        line = json.dumps(record, default=str)
        with self._out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def _write_state(self, active: bool = True) -> None:
        now = time.time()
        with self._lock:
            data = {
                "set": self.set_name,
                "spec": str(self.spec_path),
                "uri": self.uri,
                "pid": os.getpid(),
                "active": active,
                "connected": self.connected,
                "started_at": self.started_at,
                "updated_at": now,
                "vms": {w.name: w.as_dict(now) for w in self.vms.values()},
            }
            path = state_path(self.set_name, self.directory)
            write_atomic(path, json.dumps(data, indent=2) + "\n")

    def _set_phase(self, w: VmWatch, phase: str, *, ready: bool | None = None) -> None:
        with self._lock:
            w.phase = phase
            if ready is not None:
                w.ready = ready
            w.last_change = time.time()
            self._changed.notify_all()
        self._write_state()

    # --- events ----------------------------------------------------------------------

    def _handle(self, item: DomainEvent | _Note) -> None:
        if isinstance(item, _Note):
            noted = self.vms[item.vm]
            if item.epoch == noted.epoch:
                self._decide(noted, item.cause)
            return
        if item.kind == "disconnected":
            self._reconnect(item.detail)
            return
        w = self.by_domain.get(item.domain)
        if w is None:
            return
        self.log("domain-event", w.name, kind=item.kind, detail=item.detail, phase=w.phase)
        kind = item.kind
        if kind == "stopped":
            if w.phase in ("waiting", "restarting", "gave-up"):
                return  # a restart in flight handles its own failure
            cause = stop_cause(item.detail)
            if cause == "shutdown" and time.time() - w.pending_watchdog < 10:
                cause = "watchdog"  # the watchdog's poweroff/shutdown action
            elif cause == "crashed" and time.time() - w.pending_panic < 10:
                cause = "panicked"  # on_crash=destroy after a pvpanic report
            self._decide(w, cause)
        elif kind == "crashed":
            if on_crash_for(w.policy.policy) == "restart":
                # libvirt resets it in place (same QEMU): wait for it to be ready.
                if w.phase not in ("recovering", "gave-up"):
                    self._decide(w, "panicked", in_place=True)
            else:
                # on_crash=destroy: the stopped event that follows decides.
                w.pending_panic = item.at
        elif kind == "watchdog":
            if item.detail == "reset":
                if w.phase != "gave-up":
                    self._decide(w, "watchdog", in_place=True)
            elif item.detail in ("poweroff", "shutdown"):
                w.pending_watchdog = item.at
        elif kind == "reboot":
            if w.phase not in ("recovering", "gave-up", "waiting", "restarting"):
                self._decide(w, "reboot", in_place=True)
        elif kind in ("started", "resumed"):
            if w.phase in ("unknown", "down", "gave-up", "absent"):
                # Started by someone else (kvmctl apply, virsh start): supervise
                # it afresh.
                with self._lock:
                    w.history.clear()
                    w.epoch += 1
                self.log("running", w.name, reason="started outside the supervisor")
                self._set_phase(w, "running", ready=True)
        elif kind == "undefined":
            with self._lock:
                w.epoch += 1
            self._set_phase(w, "absent", ready=False)

    def _decide(self, w: VmWatch, cause: str, *, in_place: bool = False) -> None:
        now = time.time()
        with self._lock:
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
        self.log("decision", w.name, cause=cause, in_place=in_place, **d.as_dict())
        if d.kind == "restart":
            self._set_phase(w, "waiting", ready=False)
            self._spawn(f"restart-{w.name}", lambda: self._restart(w, epoch, d, cause))
        elif d.kind == "recover":
            self._set_phase(w, "recovering", ready=False)
            self._spawn(f"recover-{w.name}", lambda: self._recover(w, epoch, now))
        elif d.kind == "give-up":
            self._set_phase(w, "gave-up", ready=False)
            self._power_off_after_giving_up(w)
        else:
            active = self._active(w.domain)
            self._set_phase(w, "running" if active else "down", ready=active)

    def _power_off_after_giving_up(self, w: VmWatch) -> None:
        """A VM the hypervisor keeps resetting in place would keep failing (and
        eating CPU): once given up it is powered off."""
        conn = self.watch.conn
        if conn is None or not self._active(w.domain):
            self.log("gave-up", w.name, state="shut off")
            return
        try:
            Virt(conn).stop(w.domain)
            self.log("gave-up", w.name, state="powered off")
        except KvmctlError as err:
            self.log("gave-up", w.name, state="running", error=str(err))

    def _active(self, domain: str) -> bool:
        try:
            st = self.watch.states().get(domain)
        except KvmctlError:
            return False
        return st is not None and st.active

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def run() -> None:
            try:
                target()
            except Exception as err:  # noqa: BLE001 - a worker must not die silently
                self.log("worker-error", worker=name, error=f"{type(err).__name__}: {err}")

        t = threading.Thread(target=run, name=name, daemon=True)
        self._workers = [x for x in self._workers if x.is_alive()] + [t]
        t.start()

    # --- reconnecting ------------------------------------------------------------------

    def _reconnect(self, reason: str) -> None:
        self.connected = False
        self.log("disconnected", reason=reason)
        self._write_state()
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
            self.connected = True
            self.log("reconnected", after_s=round(time.monotonic() - t0, 1))
            self._reconcile(initial=False)
            return

    def _reconcile(self, initial: bool) -> None:
        """Compare what runs with what is known: events missed while not
        connected (or before the supervisor started) are acted on once."""
        try:
            states = self.watch.states()
        except KvmctlError as err:
            self.log("reconcile-failed", error=str(err))
            return
        for w in self.vms.values():
            st: DomainState | None = states.get(w.domain)
            self.log(
                "observed",
                w.name,
                state=st.state if st else "absent",
                reason=st.reason if st else "",
                phase=w.phase,
            )
            if w.phase in ("waiting", "restarting"):
                continue  # its worker goes on
            if st is None:
                self._set_phase(w, "absent", ready=False)
            elif st.active and w.phase == "recovering":
                # Its readiness watch died with the old connection: watch anew.
                with self._lock:
                    w.epoch += 1
                    epoch = w.epoch
                self._spawn(f"recover-{w.name}", partial(self._recover, w, epoch, time.time()))
            elif st.active:
                self._set_phase(w, "running", ready=True)
            elif w.phase == "gave-up":
                continue
            elif initial:
                if st.reason in _FAILED_SHUTOFF:
                    self._decide(w, stop_cause(st.reason))
                else:
                    self._set_phase(w, "down", ready=False)
            elif w.phase in ("running", "recovering"):
                # It was running when we lost sight of it.
                self._decide(w, stop_cause(st.reason))
            else:
                self._set_phase(w, "down", ready=False)
        self._write_state()

    # --- workers -------------------------------------------------------------------------

    def _current(self, w: VmWatch, epoch: int) -> bool:
        return not self._stop.is_set() and w.epoch == epoch

    def _restart(self, w: VmWatch, epoch: int, decision: Decision, cause: str) -> None:
        if decision.delay and self._stop.wait(decision.delay):
            return
        if not self._wait_dependencies(w, epoch) or not self._current(w, epoch):
            return
        self._set_phase(w, "restarting", ready=False)
        self.log("restarting", w.name, cause=cause)
        try:
            with self._set_lock(w, epoch):
                if not self._current(w, epoch):
                    return
                outcome = self._start(w, hung=cause == "not-ready")
        except KvmctlError as err:
            if not self._current(w, epoch):
                return
            self.log("restart-failed", w.name, error=str(err))
            self.events.put(_Note(w.name, epoch, "start-failed"))
            return
        if outcome is None:
            return
        pid = threads.qemu_pid(w.domain)
        self.log(
            "restarted",
            w.name,
            action=outcome.action,
            ready_s=None if outcome.ready_seconds is None else round(outcome.ready_seconds, 2),
            pid=pid,
        )
        if self._current(w, epoch):
            self._set_phase(w, "running", ready=True)

    def _wait_dependencies(self, w: VmWatch, epoch: int) -> bool:
        said: list[str] = []
        with self._lock:
            while self._current(w, epoch):
                ready = {n: v.ready and v.phase == "running" for n, v in self.vms.items()}
                missing = waiting_on([d for d in w.depends_on if d in self.vms], ready)
                if not missing:
                    if said:
                        self.log("dependencies-ready", w.name, depends_on=w.depends_on)
                    return True
                if missing != said:
                    self.log("waiting-for-dependency", w.name, waiting_on=missing)
                    said = missing
                self._changed.wait(1.0)
        return False

    @contextmanager
    def _set_lock(self, w: VmWatch, epoch: int) -> Iterator[None]:
        """Restarts change the set like apply does: never at the same time as
        an apply or destroy of it."""
        said = False
        while True:
            try:
                with set_lock(self.set_name):
                    yield
                return
            except HostError as err:
                if "is changing cockpit" not in str(err):
                    raise
                if not said:
                    self.log("waiting-for-set-lock", w.name, reason=str(err))
                    said = True
                if self._stop.wait(1.0) or not self._current(w, epoch):
                    raise KvmctlError("supervisor stopping") from None

    def _start(self, w: VmWatch, hung: bool) -> VmOutcome | None:
        """Start a defined, stopped domain the way `kvmctl apply` does, from the
        spec as it is now; `hung`: it runs but never became ready, so it is
        powered off first. None when there was nothing to start."""
        session = open_session(self.spec_path, self.uri, host=self.host)
        virt = session.virt
        assert virt is not None
        try:
            plan = session.plan
            vm_plan = plan.vms.get(w.name)
            if vm_plan is None:
                self.log("not-restarted", w.name, reason="no longer in the spec")
                self._set_phase(w, "down", ready=False)
                return None
            dom = virt.lookup(w.domain)
            if dom is None:
                self.log("not-restarted", w.name, reason="domain no longer defined")
                self._set_phase(w, "absent", ready=False)
                return None
            if dom.isActive() and hung:
                virt.stop(w.domain)
            elif dom.isActive():
                self.log("not-restarted", w.name, reason="already running")
                return VmOutcome(w.name, "unchanged")
            single = replace(
                plan, actions=[Action("start", w.name, w.domain, ("restart",))], bridge_actions=[]
            )
            with Netlink() as nl:
                result = Applier(
                    virt,
                    single,
                    netlink=None if session.remote else nl,
                    rt_by_thread=session.facts.rt_group_sched,
                    pool_path=session.options.pool_path,
                    host_cpus=max(session.facts.cpu_ids, default=0) + 1,
                    progress=lambda vm, what: self.log("progress", vm, what=what),
                    on_this_host=not session.remote,
                ).run()
            return result.outcomes[w.name]
        finally:
            try:
                virt.conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    def _recover(self, w: VmWatch, epoch: int, since: float) -> None:
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
                self.log("recover-interrupted", w.name, error=str(err))
                return
            self.log("not-ready", w.name, error=str(err))
            self.events.put(_Note(w.name, epoch, "not-ready"))
            return
        except Exception as err:  # noqa: BLE001 - libvirt gone: reconcile decides
            if self._current(w, epoch):
                self.log("recover-interrupted", w.name, error=str(err))
            return
        if self._current(w, epoch):
            self.log("recovered", w.name, ready_s=round(time.time() - since, 2))
            self._set_phase(w, "running", ready=True)


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive() == 1)
    except Exception:  # noqa: BLE001 - a closed connection raises
        return False
