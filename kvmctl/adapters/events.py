"""libvirt's default event loop, run once per process in a daemon thread.

Lifecycle, agent and watchdog events and non-blocking console streams only
arrive on connections opened after the loop is registered, so every
connection kvmctl opens goes through `ensure_event_loop()` first.
"""

from __future__ import annotations

import threading

import libvirt

_lock = threading.Lock()
_started = False


def ensure_event_loop() -> None:
    global _started
    with _lock:
        if _started:
            return
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run, name="libvirt-events", daemon=True)
        thread.start()
        _started = True


def _run() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()
