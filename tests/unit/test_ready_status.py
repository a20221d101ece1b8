"""Reading `cloud-init status --long` for the cloud-init readiness probe."""

from __future__ import annotations

import pytest

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
