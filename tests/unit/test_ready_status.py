"""Reading `cloud-init status --long` for the cloud-init readiness probe."""

from __future__ import annotations

import time

import pytest

from kvmctl.adapters import guestexec, ready
from kvmctl.adapters.ready import _status_fields
from tests.unit.planner_helpers import spec

pytestmark = pytest.mark.unit

RUNNING = """status: running
time: Mon, 07 Dec 2026 01:30:00 +0000
detail:
Running in stage: modules-config
"""
DONE = """status: done
boot_status_code: enabled-by-generator
last_update: Mon, 07 Dec 2026 01:31:00 +0000
detail:
DataSourceNoCloud [seed=/dev/sr0][dsmode=net]
"""
ERROR = """status: error
time: Mon, 07 Dec 2026 01:31:00 +0000
detail:
('write-files', KeyError('content'))
"""


def test_status_and_the_stage_it_is_in() -> None:
    assert _status_fields(RUNNING) == {
        "status": "running",
        "time": "Mon, 07 Dec 2026 01:30:00 +0000",
        "detail": "Running in stage: modules-config",
    }
    assert _status_fields(DONE)["status"] == "done"
    assert "DataSourceNoCloud" in _status_fields(DONE)["detail"]
    failed = _status_fields(ERROR)
    assert failed["status"] == "error" and "write-files" in failed["detail"]
    assert _status_fields("") == {}


def test_cloud_init_probe_goes_with_cloud_images() -> None:
    vm = spec("name: t\nvms:\n  a: {image: {builtin: debian-12}, ready: {probe: cloud-init}}\n")
    assert vm.vms["a"].ready.probe == "cloud-init"


def test_cloud_init_status_is_asked_only_once_the_result_file_is_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Until the final stage wrote its result only `cat` runs in the guest:
    `cloud-init status` starts Python, which slows a TCG guest's boot."""
    calls: list[str] = []
    results = iter([1, 1, 0])  # cat fails twice, then finds the file

    def run(_dom: object, path: str, args: list[str], _timeout: float) -> guestexec.Exited:
        calls.append(path)
        if path == "/bin/cat":
            assert args == [ready.CLOUD_INIT_RESULT]
            return guestexec.Exited(next(results), "{}", "")
        return guestexec.Exited(0, DONE, "")

    monkeypatch.setattr(guestexec, "run", run)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    watch = ready.ReadyWatch.__new__(ready.ReadyWatch)
    watch.name, watch._dom, watch._failure, watch.ready_at = "d", None, None, None
    monkeypatch.setattr(watch, "_check_connection", lambda: None, raising=False)
    watch._wait_cloud_init(time.monotonic() + 60, 60)
    assert calls == ["/bin/cat", "/bin/cat", "/bin/cat", "cloud-init"]
    assert watch.ready_at is not None
