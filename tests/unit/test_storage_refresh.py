"""refresh_pool waits out another process's volume job, and only that."""

from __future__ import annotations

import libvirt
import pytest

from kvmctl.adapters.storage import refresh_pool

pytestmark = pytest.mark.unit


class _Error(libvirt.libvirtError):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def get_error_message(self) -> str:
        return self.message


class _Pool:
    def __init__(self, *errors: str):
        self.errors = list(errors)
        self.calls = 0

    def refresh(self, _flags: int) -> None:
        self.calls += 1
        if self.errors:
            raise _Error(self.errors.pop(0))


BUSY = "internal error: pool 'kvmctl' has asynchronous jobs running."


def test_a_busy_pool_is_refreshed_once_the_job_ends() -> None:
    pool = _Pool(BUSY, BUSY)
    refresh_pool(pool, wait=5)  # type: ignore[arg-type]
    assert pool.calls == 3


def test_another_error_is_raised_at_once() -> None:
    pool = _Pool("cannot open directory '/gone': No such file or directory")
    with pytest.raises(libvirt.libvirtError, match="No such file"):
        refresh_pool(pool, wait=5)  # type: ignore[arg-type]
    assert pool.calls == 1


def test_a_pool_busy_for_longer_than_the_wait_raises() -> None:
    pool = _Pool(*[BUSY] * 100)
    with pytest.raises(libvirt.libvirtError, match="asynchronous jobs"):
        refresh_pool(pool, wait=0.3)  # type: ignore[arg-type]
    assert 1 < pool.calls < 100
