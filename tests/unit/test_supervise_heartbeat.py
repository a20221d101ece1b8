"""The heartbeat listener on a unix socket standing in for QEMU's end of the
channel: beats arm the deadline, silence is one miss, a beat is a resume,
and a socket that goes away is connected again."""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmctl.supervise.heartbeat import HeartbeatListener, HeartbeatNote, HeartbeatView

pytestmark = pytest.mark.unit

DEADLINE = 0.3


@pytest.fixture
def server(tmp_path: Path) -> Iterator[socket.socket]:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(tmp_path / "hb.sock"))
    srv.listen(1)
    srv.settimeout(10)
    yield srv
    srv.close()


def listen(
    path: str,
) -> tuple[HeartbeatView, queue.Queue[HeartbeatNote], threading.Event, threading.Thread]:
    view = HeartbeatView(0.05, DEADLINE, path)
    notes: queue.Queue[HeartbeatNote] = queue.Queue()
    stop = threading.Event()
    t = threading.Thread(target=HeartbeatListener("vm", view, notes.put, stop).run, daemon=True)
    t.start()
    return view, notes, stop, t


def test_silence_is_one_miss_and_a_beat_resumes(server: socket.socket) -> None:
    view, notes, stop, t = listen(server.getsockname())
    guest, _ = server.accept()
    try:
        with pytest.raises(queue.Empty):
            notes.get(timeout=2 * DEADLINE)  # not armed before the first beat
        guest.sendall(b"beat 1\nbeat 2\n")
        missed = notes.get(timeout=5)
        assert (missed.kind, missed.vm) == ("missed", "vm") and missed.age_s >= DEADLINE
        assert view.missed and view.misses == 1 and view.beats == 2 and view.connected
        with pytest.raises(queue.Empty):
            notes.get(timeout=2 * DEADLINE)  # reported once
        guest.sendall(b"beat 3\n")
        resumed = notes.get(timeout=5)
        assert resumed.kind == "resumed" and not view.missed and view.beats == 3
    finally:
        stop.set()
        guest.close()
        t.join(5)


def test_reconnects_and_the_deadline_keeps_counting(server: socket.socket) -> None:
    view, notes, stop, t = listen(server.getsockname())
    guest, _ = server.accept()
    try:
        guest.sendall(b"beat 1\n")
        guest.close()  # QEMU went away
        again, _ = server.accept()  # the listener connects anew
        assert notes.get(timeout=5).kind == "missed"
        again.sendall(b"beat 1\n")
        assert notes.get(timeout=5).kind == "resumed"
        assert view.misses == 1 and view.beats == 2
        again.close()
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()
