"""One kvmctl at a time changes a given cockpit: apply and destroy hold an
exclusive lock named after the set, so two runs never race on its domains,
volumes or bridges. A lock held by a dead process is released by the kernel."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from kvmctl.errors import HostError

LOCK_DIR = Path(os.environ.get("KVMCTL_LOCK_DIR", "/run/kvmctl/locks"))


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an exclusive lock file that records our pid. When another process
    holds it, raise HostError with `busy(holder_pid)`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise HostError(busy(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def set_lock(set_name: str, directory: Path = LOCK_DIR) -> AbstractContextManager[None]:
    return pid_lock(
        directory / f"{set_name}.lock",
        lambda pid: f"another kvmctl (pid {pid}) is changing cockpit '{set_name}' right now: "
        "wait for it to finish",
    )
