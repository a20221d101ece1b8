"""Domain lifecycle, watchdog and reboot events from one long-lived libvirt
connection, as plain `DomainEvent`s handed to a sink.

The connection has keepalive (a dead daemon is noticed within ~15 s) and a
close callback: when libvirtd goes away the sink gets a `disconnected` event,
and `connect()` may be called again to open a new connection and subscribe
anew. Events that happened while disconnected are lost by libvirt; callers
compare `states()` after reconnecting.

Callbacks run on libvirt's event-loop thread: they only build the event and
hand it on, never call back into libvirt.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

from kvmctl.adapters.connection import open_connection
from kvmctl.errors import KvmctlError

_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
_STOPPED = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_SAVED: "saved",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED: "failed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "from-snapshot",
}
_CRASHED = {
    libvirt.VIR_DOMAIN_EVENT_CRASHED_PANICKED: "panicked",
    getattr(libvirt, "VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED", 1): "crashloaded",
}
_WATCHDOG = {
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_NONE: "none",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_PAUSE: "pause",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET: "reset",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_POWEROFF: "poweroff",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_DEBUG: "debug",
    libvirt.VIR_DOMAIN_EVENT_WATCHDOG_INJECTNMI: "inject-nmi",
}
_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "none",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from-snapshot",
    getattr(libvirt, "VIR_DOMAIN_SHUTOFF_DAEMON", 8): "daemon",
}


@dataclass(frozen=True)
class DomainEvent:
    """kind: defined, undefined, started, suspended, resumed, stopped, shutdown,
    crashed, watchdog, reboot, or disconnected (domain empty). detail: for
    stopped the reason (shutdown, destroyed, crashed, failed, ...), for
    crashed panicked/crashloaded, for watchdog the action taken."""

    domain: str
    kind: str
    detail: str
    at: float  # wall clock

    def as_dict(self) -> dict[str, object]:
        return {"domain": self.domain, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class DomainState:
    state: str  # running, paused, shut off, crashed, ...
    reason: str  # for shut off: why (crashed, destroyed, failed, ...)

    @property
    def active(self) -> bool:
        return self.state in ("running", "paused", "shutdown")


Sink = Callable[[DomainEvent], None]


class EventWatch:
    """One connection subscribed to the events of the domains `wanted` accepts."""

    def __init__(self, uri: str, sink: Sink, wanted: Callable[[str], bool]):
        self.uri = uri
        self.sink = sink
        self.wanted = wanted
        self.conn: libvirt.virConnect | None = None
        self._callbacks: list[int] = []
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def connected(self) -> bool:
        conn = self.conn
        if conn is None:
            return False
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def connect(self) -> None:
        """Open a connection and subscribe; raises KvmctlError when libvirtd
        cannot be reached."""
        self.close()
        conn = open_connection(self.uri)
        with self._lock:
            self._generation += 1
            generation = self._generation
        try:
            ids = [
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, generation
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog, generation
                ),
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT, self._on_reboot, generation
                ),
            ]
            conn.registerCloseCallback(self._on_close, generation)
        except libvirt.libvirtError as err:
            _close_quietly(conn)
            raise KvmctlError(
                f"cannot subscribe to domain events on {self.uri}: {err.get_error_message()}"
            ) from None
        self.conn = conn
        self._callbacks = ids

    def close(self) -> None:
        conn, self.conn = self.conn, None
        with self._lock:
            self._generation += 1  # late callbacks of the old connection are dropped
        if conn is None:
            return
        for cb in self._callbacks:
            try:
                conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        self._callbacks = []
        try:
            conn.unregisterCloseCallback()
        except libvirt.libvirtError:
            pass
        _close_quietly(conn)

    def states(self) -> dict[str, DomainState]:
        """Every wanted domain's state now (name -> state)."""
        if self.conn is None:
            raise KvmctlError(f"not connected to {self.uri}")
        out: dict[str, DomainState] = {}
        try:
            domains = self.conn.listAllDomains()
        except libvirt.libvirtError as err:
            raise KvmctlError(f"cannot list domains: {err.get_error_message()}") from None
        for dom in domains:
            try:
                name = dom.name()
                if not self.wanted(name):
                    continue
                state, reason = dom.state()
            except libvirt.libvirtError:
                continue  # undefined while we listed
            out[name] = DomainState(
                _STATES.get(state, str(state)),
                _SHUTOFF_REASONS.get(reason, str(reason))
                if state == libvirt.VIR_DOMAIN_SHUTOFF
                else "",
            )
        return out

    # --- callbacks (event-loop thread) ---------------------------------------------

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation

    def _emit(self, generation: int, dom: libvirt.virDomain, kind: str, detail: str) -> None:
        if not self._current(generation):
            return
        name = dom.name()  # cached in the object: no call to the daemon
        if self.wanted(name):
            self.sink(DomainEvent(name, kind, detail, time.time()))

    def _on_lifecycle(
        self, _conn: object, dom: libvirt.virDomain, event: int, detail: int, gen: int
    ) -> None:
        kind = _LIFECYCLE.get(event, str(event))
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            text = _STOPPED.get(detail, str(detail))
        elif event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
            text = _CRASHED.get(detail, str(detail))
        else:
            text = str(detail)
        self._emit(gen, dom, kind, text)

    def _on_watchdog(self, _conn: object, dom: libvirt.virDomain, action: int, gen: int) -> None:
        self._emit(gen, dom, "watchdog", _WATCHDOG.get(action, str(action)))

    def _on_reboot(self, _conn: object, dom: libvirt.virDomain, gen: int) -> None:
        self._emit(gen, dom, "reboot", "")

    def _on_close(self, _conn: object, reason: int, gen: int) -> None:
        if self._current(gen):
            names = {0: "error", 1: "eof", 2: "keepalive", 3: "client"}
            self.sink(DomainEvent("", "disconnected", names.get(reason, str(reason)), time.time()))


def _close_quietly(conn: libvirt.virConnect) -> None:
    try:
        conn.close()
    except libvirt.libvirtError:
        pass
