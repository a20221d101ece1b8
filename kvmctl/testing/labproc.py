"""Processes of a lab host: run a command that must succeed, read a daemon's pid
file, wait for a listener, signal a PID and wait for it to be gone. Shared by
lab.py (bring-up, teardown) and labops.py (break and mend a running lab).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from kvmctl.errors import HostError


def run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")


def read_pid(path: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().strip())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise HostError(f"the lab daemon did not write {path}")


def wait_listening(address: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise HostError(f"the lab libvirtd does not listen on {address}:{port}")


def kill(pid: int, sig: int) -> bool:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return True
        if "\nState:\tZ" in status:  # exited; whoever is its parent has yet to reap it
            return True
        time.sleep(0.05)
    return False
