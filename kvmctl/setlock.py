"""One kvmctl at a time changes a given cockpit: apply and destroy hold an
exclusive lock named after the set, so two runs never race on its domains,
volumes or bridges. A lock held by a dead process is released by the kernel."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kvmctl.errors import HostError

LOCK_DIR = Path(os.environ.get("KVMCTL_LOCK_DIR", "/run/kvmctl/locks"))


@contextmanager
def set_lock(set_name: str, directory: Path = LOCK_DIR) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / f"{set_name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise HostError(
                f"another kvmctl (pid {holder}) is changing cockpit '{set_name}' right now: "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock
