"""How long each VM's last snapshot, last migration and last boot to ready
took, kept per set.

`kvmctl status` (and so `kvmctl exporter`) reads it back. Operations that
change a VM call `record()` once they are done; the newest record of each
kind per VM is kept, nothing else. Apply and supervisor restarts call
`record_ready()`: the newest readiness, its boot deadline, and the fastest
cold boot ever recorded (which `kvmctl plan` weighs deadlines against). The
file is ``$KVMCTL_HISTORY_DIR/<set>.json`` (default /var/lib/kvmctl/history):

    {"set": "demo", "vms": {"hud": {"snapshot": {"seconds": 1.42,
      "at": 1718000000.0, "name": "before-update"}, "migration": {...},
      "ready": {"seconds": 4.62, "at": 1718000100.0, "after": "apply",
      "cold": true, "deadline": 2.0, "met": false, "best_cold_seconds": 4.4}}}}

A cold boot that followed a failed warm start also has "warm_start_failed"
(the error).

Writers of one set are serialised with a lock file and replace the file
atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvmctl.state.paths import history_dir
from kvmctl.state.statefile import write_atomic

KINDS = ("snapshot", "migration")


@dataclass(frozen=True)
class Readiness:
    """One VM's boot to ready."""

    seconds: float  # from the start of apply, or of the supervisor's decision to restart
    deadline: float | None = None  # its ready.deadline then
    met: bool | None = None
    after: str = "apply"  # or "restart"
    cold: bool = True  # booted from scratch, not resumed from a saved state
    fallback: str | None = None  # why a warm start failed before this cold boot


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
    vms = _vms(doc)
    for vm, value in seconds.items():
        entry: dict[str, Any] = {"seconds": round(float(value), 3), "at": round(at, 3)}
        if name is not None:
            entry["name"] = name
        vms.setdefault(vm, {})[kind] = entry
    return {"set": set_name, "vms": vms}


def merge_ready(
    doc: Mapping[str, Any], set_name: str, ready: Mapping[str, Readiness], at: float
) -> dict[str, Any]:
    """`doc` with the readiness of each VM in `ready` replaced, and its
    fastest cold boot kept (pure)."""
    vms = _vms(doc)
    for vm, r in ready.items():
        best = best_cold(doc).get(vm)
        if r.cold:
            best = r.seconds if best is None else min(best, r.seconds)
        entry: dict[str, Any] = {
            "seconds": round(r.seconds, 3),
            "at": round(at, 3),
            "after": r.after,
            "cold": r.cold,
            "deadline": r.deadline,
            "met": r.met,
        }
        if best is not None:
            entry["best_cold_seconds"] = round(best, 3)
        if r.fallback is not None:
            entry["warm_start_failed"] = r.fallback
        vms.setdefault(vm, {})["ready"] = entry
    return {"set": set_name, "vms": vms}


def best_cold(doc: Mapping[str, Any]) -> dict[str, float]:
    """VM -> the fastest cold boot to ready recorded in `doc` (pure)."""
    out = {}
    for vm, kinds in (doc.get("vms") or {}).items():
        value = ((kinds or {}).get("ready") or {}).get("best_cold_seconds")
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[vm] = float(value)
    return out


def _vms(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {vm: dict(kinds) for vm, kinds in (doc.get("vms") or {}).items()}


def last_seconds(doc: Mapping[str, Any], vm: str, kind: str) -> float | None:
    """The duration of `vm`'s newest `kind` record in `doc`, or None (pure)."""
    entry = ((doc.get("vms") or {}).get(vm) or {}).get(kind) or {}
    value = entry.get("seconds")
    return float(value) if isinstance(value, int | float) else None


def last_boot(doc: Mapping[str, Any], vm: str) -> str | None:
    """How `vm`'s newest boot to ready in `doc` started: "cold" or "warm" (pure)."""
    entry = ((doc.get("vms") or {}).get(vm) or {}).get("ready")
    if not isinstance(entry, dict):
        return None
    return "cold" if entry.get("cold", True) else "warm"


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
    when = at or time.time()
    return _update(set_name, directory, lambda doc: merge(doc, set_name, kind, seconds, when, name))


def record_ready(
    set_name: str,
    ready: Mapping[str, Readiness],
    *,
    at: float | None = None,
    directory: Path | None = None,
) -> bool:
    """Keep `ready` (vm -> its boot to ready) as the newest readiness of those
    VMs; False when the file cannot be written, like `record()`."""
    when = at or time.time()
    return _update(set_name, directory, lambda doc: merge_ready(doc, set_name, ready, when))


def _update(
    set_name: str, directory: Path | None, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> bool:
    path = history_path(set_name, directory)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            doc = change(read(set_name, directory))
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
