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
from kvmctl.state.paths import ensure_dir, lock_dir


@contextmanager
def pid_lock(path: Path, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an exclusive lock file that records our pid. When another process
    holds it, raise HostError with `busy(holder_pid)`."""
    ensure_dir(path.parent)
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


def set_lock(set_name: str, directory: Path | None = None) -> AbstractContextManager[None]:
    return pid_lock(
        (directory or lock_dir()) / f"{set_name}.lock",
        lambda pid: (
            f"another kvmctl (pid {pid}) is changing cockpit '{set_name}' right now: "
            "wait for it to finish"
        ),
    )
