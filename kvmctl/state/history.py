"""How long each VM's last snapshot and last migration took, kept per set.

`kvmctl status` (and so `kvmctl exporter`) reads it back. Operations that
change a VM call `record()` once they are done; the newest record of each
kind per VM is kept, nothing else. The file is
``$KVMCTL_HISTORY_DIR/<set>.json`` (default /var/lib/kvmctl/history):

    {"set": "demo", "vms": {"hud": {"snapshot": {"seconds": 1.42,
      "at": 1718000000.0, "name": "before-update"}, "migration": {...}}}}

Writers of one set are serialised with a lock file and replace the file
atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from kvmctl.state.paths import history_dir
from kvmctl.state.statefile import write_atomic

KINDS = ("snapshot", "migration")


def history_path(set_name: str, directory: Path | None = None) -> Path:
    return (directory or history_dir()) / f"{set_name}.json"


def merge(
    doc: Mapping[str, Any],
    set_name: str,
    kind: str,
    seconds: Mapping[str, float],
    at: float,
    name: str | None = None,
) -> dict[str, Any]:
    """`doc` with the newest `kind` record of each VM in `seconds` replaced (pure)."""
    if kind not in KINDS:
        raise ValueError(f"unknown operation kind {kind!r} (known: {', '.join(KINDS)})")
    vms = {vm: dict(kinds) for vm, kinds in (doc.get("vms") or {}).items()}
    for vm, value in seconds.items():
        entry: dict[str, Any] = {"seconds": round(float(value), 3), "at": round(at, 3)}
        if name is not None:
            entry["name"] = name
        vms.setdefault(vm, {})[kind] = entry
    return {"set": set_name, "vms": vms}


def last_seconds(doc: Mapping[str, Any], vm: str, kind: str) -> float | None:
    """The duration of `vm`'s newest `kind` record in `doc`, or None (pure)."""
    entry = ((doc.get("vms") or {}).get(vm) or {}).get(kind) or {}
    value = entry.get("seconds")
    return float(value) if isinstance(value, int | float) else None


def read(set_name: str, directory: Path | None = None) -> dict[str, Any]:
    """The set's history; an empty one when nothing was recorded or the file is unreadable."""
    try:
        doc = json.loads(history_path(set_name, directory).read_text())
    except (OSError, ValueError):
        return {"set": set_name, "vms": {}}
    return doc if isinstance(doc, dict) else {"set": set_name, "vms": {}}


def record(
    set_name: str,
    kind: str,
    seconds: Mapping[str, float],
    *,
    name: str | None = None,
    at: float | None = None,
    directory: Path | None = None,
) -> bool:
    """Keep `seconds` (vm -> duration) as the newest `kind` ("snapshot" or
    "migration") of those VMs; `name` is the snapshot's name, or the
    destination of a migration. False when the file cannot be written: the
    durations are for reading back, and must not fail the operation that
    they describe, which succeeded."""
    path = history_path(set_name, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            doc = merge(read(set_name, directory), set_name, kind, seconds, at or time.time(), name)
            write_atomic(path, json.dumps(doc, indent=2) + "\n")
    except OSError:
        return False
    return True


def forget(set_name: str, directory: Path | None = None) -> None:
    """Drop the set's history (its VMs were destroyed)."""
    path = history_path(set_name, directory)
    for each in (path, path.with_suffix(".lock")):
        with suppress(OSError):
            each.unlink()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
