"""Reading snapshots: the listing, sizes, groups, the status summary."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.errors import KvmctlError
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.planner.qcow2 import QCOW2_HEADER_BYTES, parse_qcow2_snapshots, qcow2_snapshot_table
from kvmctl.planner.snapshot import SnapshotRecord, find, summarize
from kvmctl.planner.snapshot_group import Manifest, manifest_from_tags
from kvmctl.snapshot._common import (
    Listing,
    _is_local,
    _load,
    _open,
    _records,
    _vm_plan,
    load_manifests,
)
from kvmctl.spec import Cockpit

# --------------------------------------------------------------------------- reading


def _sizes(
    ops: SnapshotOps, vp: VmPlan, records: list[SnapshotRecord], local: bool
) -> list[SnapshotRecord]:
    """Sizes where they can be had: an overlay's allocation from its pool, an
    internal snapshot's saved RAM from the qcow2 snapshot table (local host)."""
    from dataclasses import replace

    table: dict[str, int] = {}
    if local and any(r.kind == "internal" for r in records):
        with suppress(KvmctlError, OSError, ValueError):
            table = _qcow2_vm_state(ops.volume_path(vp.volume.pool, vp.volume.name))
    out = []
    for r in records:
        size: int | None
        if r.kind == "external":
            parts = [ops.file_size(f) for _d, f in r.overlays]
            size = (
                sum(p for p in parts if p is not None)
                if any(p is not None for p in parts)
                else None
            )
        else:
            size = table.get(r.name)
        out.append(replace(r, size_bytes=size))
    return out


def _qcow2_vm_state(path: str) -> dict[str, int]:
    with open(path, "rb") as f:
        count, offset = qcow2_snapshot_table(f.read(QCOW2_HEADER_BYTES))
        if count == 0:
            return {}
        f.seek(offset)
        table = f.read(min(count * 1024 + 4096, 16 * 1024 * 1024))
    return {s.name: s.vm_state_bytes for s in parse_qcow2_snapshots(table, count)}


def list_snapshots(spec: Cockpit | str | Path, uri: str, vm: str | None = None) -> Listing:
    """Every snapshot of the set's VMs (or of one VM) and the set's groups."""
    spec = _load(spec)
    session, ops = _open(spec, uri)
    plan = session.plan
    vms = [_vm_plan(session, vm).name] if vm is not None else list(plan.vms)
    local = _is_local(uri)
    snapshots: list[SnapshotRecord] = []
    by_vm: dict[str, list[SnapshotRecord] | None] = {}
    for name in vms:
        recs = _records(ops, plan.vms[name])
        by_vm[name] = recs
        if recs:
            snapshots += _sizes(ops, plan.vms[name], recs, local)
    return Listing(plan.set_name, plan.spec_hash, snapshots, _groups(plan, by_vm, vm))


def _groups(
    plan: Plan, by_vm: dict[str, list[SnapshotRecord] | None], only_vm: str | None
) -> list[dict[str, Any]]:
    """Groups with a manifest and every member present are complete; groups
    seen only in members' tags (manifest lost) are listed as such."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for m in load_manifests(plan.set_name):
        present = [
            mem.vm for mem in m.members if find(by_vm.get(mem.vm) or [], mem.snapshot) is not None
        ]
        if only_vm is not None and only_vm not in m.vms:
            continue
        if not present and only_vm is None:
            continue  # every member gone (the set was destroyed): a stale manifest
        seen.add(m.name)
        out.append(_group_row(m, plan, present, "manifest"))
    tagged: dict[str, dict[str, SnapshotRecord]] = {}
    for vm, recs in by_vm.items():
        for r in recs or []:
            if r.group and r.group not in seen:
                tagged.setdefault(r.group, {})[vm] = r
    for group, members in sorted(tagged.items()):
        m2 = manifest_from_tags(plan.set_name, group, members)
        if m2 is not None:
            out.append(_group_row(m2, plan, list(members), "tags only (manifest missing)"))
    return out


def _group_row(m: Manifest, plan: Plan, present: list[str], source: str) -> dict[str, Any]:
    complete = sorted(present) == sorted(m.vms) and source == "manifest"
    return {
        "name": m.name,
        "instant": m.instant,
        "kind": "disk-only" if m.disk_only else "memory",
        "members": m.vms,
        "present": sorted(present),
        "complete": complete,
        "pause_window_ms": m.pause_window_ms,
        "pause_spread_ms": m.pause_spread_ms,
        "spec_hash": m.spec_hash,
        "spec_changed": m.spec_hash != plan.spec_hash,
        "source": source,
    }


def snapshot_summary(virt: Virt, plan: Plan) -> dict[str, dict[str, Any]]:
    """For `kvmctl status`: per VM the number of snapshots, the newest one's
    name, time and group (None when the VM has no domain or no snapshots)."""
    ops = SnapshotOps(virt)
    records: dict[str, list[SnapshotRecord]] = {}
    for vm, vp in plan.vms.items():
        with suppress(KvmctlError):
            records[vm] = _records(ops, vp) or []
    return summarize(records)


def latest_group(virt: Virt, plan: Plan) -> str | None:
    """The newest group snapshot of the set that still has all its members."""
    ops = SnapshotOps(virt)
    by_vm = {}
    for vm, vp in plan.vms.items():
        with suppress(KvmctlError):
            by_vm[vm] = _records(ops, vp)
    complete = [g for g in _groups(plan, by_vm, None) if g["complete"]]
    newest = max(complete, key=lambda g: g["instant"], default=None)
    return None if newest is None else str(newest["name"])
