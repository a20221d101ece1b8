"""One libvirt connection that outlives a daemon restart, and the error
mapping every libvirt adapter shares: libvirt errors come out as kvmctl
errors with a sentence that names what was being done.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import libvirt

from kvmctl.adapters.events import ensure_event_loop
from kvmctl.adapters.libvirt import open_virconnect
from kvmctl.errors import ApplyError, HostError


@contextmanager
def _mapped(what: str, kind: type[Exception] = ApplyError) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as err:
        raise kind(f"{what}: {err.get_error_message()}") from None


def open_connection(uri: str) -> libvirt.virConnect:
    """Open `uri` with the event loop running (domain events and console
    streams need it), mapped errors, and keepalive so a dead daemon or host is
    noticed within ~15 s instead of hanging a call."""
    ensure_event_loop()
    conn = open_virconnect(uri)
    conn.setKeepAlive(5, 3)
    return conn


# How long a dead connection is retried: long enough for a daemon restart.
RECONNECT_SECONDS = 30.0


class Connection:
    """A connection that, when the daemon restarts (the connection dies), is
    opened anew by the next call, so an apply that fails because of it can
    still roll back."""

    def __init__(self, conn: libvirt.virConnect):
        self._conn = conn
        try:
            self.uri: str | None = conn.getURI()
        except libvirt.libvirtError:
            self.uri = None  # dead already: calls fail as they would have
        self._reconnect = threading.Lock()
        self._gave_up = False  # after one failed reconnect, fail at once

    @property
    def conn(self) -> libvirt.virConnect:
        with self._reconnect:
            if self.uri is None or self._conn.isAlive() == 1:
                return self._conn
            deadline = time.monotonic() + (0 if self._gave_up else RECONNECT_SECONDS)
            while True:
                try:
                    self._conn = open_connection(self.uri)
                    self._gave_up = False
                    return self._conn
                except HostError:
                    if time.monotonic() >= deadline:
                        self._gave_up = True
                        raise
                    time.sleep(0.5)

    def alive(self) -> bool:
        """Whether the connection still answers, without reconnecting."""
        try:
            return bool(self._conn.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    def close(self) -> None:
        """Close the current connection (a dead one too); no reconnect."""
        with self._reconnect, suppress(libvirt.libvirtError):
            self._conn.close()
