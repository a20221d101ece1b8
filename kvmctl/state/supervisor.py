"""The supervisor's state file: /run/kvmctl/supervise/<set>.json
(KVMCTL_SUPERVISE_DIR overrides), written by `kvmctl supervise`
(kvmctl.supervise.board) and read back here for `kvmctl status`, `top` and
the exporter without loading the daemon.
"""

from __future__ import annotations

import json
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
    return data


def _is_supervisor(pid: int, started_at: object) -> bool:
    try:
        proc = psutil.Process(pid)
        # A recycled pid belongs to a process started later than ours.
        return not isinstance(started_at, int | float) or proc.create_time() <= started_at + 1
    except psutil.Error:
        return False
