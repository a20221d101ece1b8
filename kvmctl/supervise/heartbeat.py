"""Listen to a VM's heartbeat: the host end of its `heartbeat` serial channel.

libvirt has QEMU listen on a unix socket for the channel
(kvmctl.planner.channels.serial_port); one thread per VM connects to it as
the only client, and every read counts as a beat. The guest writes one line
per period (`kvmctl-tool heartbeat start PERIOD_MS` in the test guest). While
no supervisor is connected the guest's port counts as closed by the host and
Linux's virtio console blocks a write (EAGAIN with O_NONBLOCK): a guest beats
from a task of its own, never from the loop whose health it reports.

The deadline is armed by the first beat of the supervisor's lifetime: before
it, a VM is still booting, which its ready probe and timeout cover. Once
armed, no beat for `deadline` is a miss, reported once; the next beat is a
resume. A QEMU that goes away (crash, restart) closes the socket: the thread
connects again, and the deadline keeps counting, so a restarted guest that
never beats again stays missed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# How often a thread without a connection tries again.
RETRY_S = 0.2


@dataclass(frozen=True)
class HeartbeatNote:
    """A listener's report, handled on the main thread like an event."""

    vm: str
    kind: str  # "missed" or "resumed"
    age_s: float  # since the last beat, at the time of the report
    last_beat: float | None = None  # its wall clock (for a resume: the beat heard again)


@dataclass
class HeartbeatView:
    """What the state file and `kvmctl status` show of one heartbeat."""

    period: float
    deadline: float
    socket: str
    connected: bool = False
    beats: int = 0
    last_beat: float | None = None  # wall clock, for readers in other processes
    missed: bool = False
    misses: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "period_s": self.period,
            "deadline_s": self.deadline,
            "socket": self.socket,
            "connected": self.connected,
            "beats": self.beats,
            "last_beat": self.last_beat,
            "missed": self.missed,
            "misses": self.misses,
        }


class HeartbeatListener:
    def __init__(
        self,
        vm: str,
        view: HeartbeatView,
        report: Callable[[HeartbeatNote], None],
        stop: threading.Event,
    ):
        self.vm = vm
        self.view = view
        self.report = report
        self._stop = stop
        self._last: float | None = None  # monotonic time of the last beat

    def run(self) -> None:
        sock: socket.socket | None = None
        try:
            while not self._stop.is_set():
                if sock is None:
                    sock = self._connect()
                    if sock is None:
                        self._check()
                        self._stop.wait(RETRY_S)
                        continue
                sock.settimeout(self._wait())
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    self._check()
                    continue
                except OSError:
                    data = b""
                if not data:  # QEMU went away: connect again
                    sock.close()
                    sock = None
                    self.view.connected = False
                    continue
                self._beat(data.count(b"\n") or 1)
        finally:
            if sock is not None:
                sock.close()

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.view.socket)
        except OSError:
            sock.close()
            return None
        self.view.connected = True
        return sock

    def _wait(self) -> float:
        """Until the deadline passes (at most half a second, so a stop is
        noticed), or half a second while missed or not armed yet."""
        if self._last is None or self.view.missed:
            return 0.5
        left = self._last + self.view.deadline - time.monotonic()
        return min(0.5, max(0.01, left))

    def _beat(self, count: int) -> None:
        now = time.monotonic()
        age = 0.0 if self._last is None else now - self._last
        self._last = now
        self.view.beats += count
        self.view.last_beat = time.time()
        if self.view.missed:
            self.view.missed = False
            self.report(HeartbeatNote(self.vm, "resumed", round(age, 3), self.view.last_beat))

    def _check(self) -> None:
        if self._last is None or self.view.missed:
            return
        age = time.monotonic() - self._last
        if age > self.view.deadline:
            self.view.missed = True
            self.view.misses += 1
            self.report(HeartbeatNote(self.vm, "missed", round(age, 3), self.view.last_beat))
