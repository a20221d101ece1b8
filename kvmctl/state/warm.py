"""Records of warm-start states: what each VM's saved state (a libvirt
snapshot, kvmctl.planner.warm) was taken for, one file per VM at
``$KVMCTL_WARM_DIR/<set>/<vm>.json`` (default /var/lib/kvmctl/warm)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kvmctl.planner.warm import WarmRecord
from kvmctl.state.paths import warm_dir
from kvmctl.state.statefile import write_atomic


def record_path(set_name: str, vm: str) -> Path:
    return warm_dir() / set_name / f"{vm}.json"


def read(set_name: str, vm: str) -> tuple[WarmRecord | None, str | None]:
    """(the record or None when there is none, why an existing one is unreadable)."""
    path = record_path(set_name, vm)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as err:
        return None, f"{path}: {err.strerror or err}"
    try:
        return WarmRecord.decode(text), None
    except ValueError as err:
        return None, f"{path}: {err}"


def write(set_name: str, vm: str, record: WarmRecord) -> None:
    write_atomic(record_path(set_name, vm), record.encode())


def remove(set_name: str, vm: str) -> None:
    record_path(set_name, vm).unlink(missing_ok=True)


def forget(set_name: str) -> None:
    """All of a set's records (it was destroyed: its saved states went with its disks)."""
    shutil.rmtree(warm_dir() / set_name, ignore_errors=True)
