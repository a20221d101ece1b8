"""The supervisor's state file: /run/kvmctl/supervise/<set>.json
(KVMCTL_SUPERVISE_DIR overrides), written by `kvmctl supervise`
(kvmctl.supervise.board) and read back here for `kvmctl status`, `top` and
the exporter without loading the daemon.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from kvmctl.state.paths import supervise_dir


def state_path(set_name: str, directory: Path | None = None) -> Path:
    return (directory or supervise_dir()) / f"{set_name}.json"


def supervisor_state(set_name: str, directory: Path | None = None) -> dict[str, Any] | None:
    """What the supervisor of `set_name` last wrote, or None when no supervisor
    ever ran for it here. `alive` says whether that supervisor still runs."""
    path = state_path(set_name, directory)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = data.get("pid")
    data["alive"] = bool(
        data.get("active") and isinstance(pid, int) and _is_supervisor(pid, data.get("started_at"))
    )
    _heartbeat_ages(data)
    return data


def safe_state_of(data: dict[str, Any] | None) -> dict[str, Any]:
    """The set's safe state as its running supervisor keeps it: `degraded`,
    and the rest. With no supervisor running nobody keeps the state, so it
    is not degraded, unless a supervisor stopped without lifting its measures
    (`left_in_force`: shed VMs still paused or capped until a new supervisor
    takes them over; killed, or not connected to libvirtd as it stopped)."""
    safe = dict((data or {}).get("safe_state") or {})
    alive = bool(data and data.get("alive"))
    left = bool(data and not alive and (safe.get("paused") or safe.get("uncapped")))
    safe["left_in_force"] = left
    safe["degraded"] = left or bool(alive and safe.get("degraded"))
    return safe


def _heartbeat_ages(data: dict[str, Any]) -> None:
    """Each heartbeat's age now, from its last beat, while its supervisor runs
    (it rewrites the file every second while it listens)."""
    now = time.time()
    for vm in (data.get("vms") or {}).values():
        beat = vm.get("heartbeat") if isinstance(vm, dict) else None
        if isinstance(beat, dict):
            last = beat.get("last_beat")
            known = data["alive"] and isinstance(last, int | float)
            beat["age_s"] = round(now - last, 3) if known and last is not None else None


def _is_supervisor(pid: int, started_at: object) -> bool:
    try:
        proc = psutil.Process(pid)
        # A recycled pid belongs to a process started later than ours.
        return not isinstance(started_at, int | float) or proc.create_time() <= started_at + 1
    except psutil.Error:
        return False
