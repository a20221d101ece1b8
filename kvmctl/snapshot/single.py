"""Snapshots of one VM: create, revert, delete."""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path

from kvmctl.adapters.snapshots import PAUSED, RUNNING, SnapshotOps
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.planner import warm
from kvmctl.planner.channels import memory_snapshot_refusals
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.snapshot import (
    SnapshotRecord,
    Tag,
    check_create,
    check_delete,
    check_name,
    check_revert,
    check_spec,
    commit_step,
)
from kvmctl.snapshot._common import (
    CreateResult,
    DeleteResult,
    Progress,
    RevertResult,
    _drop_unused,
    _load,
    _open,
    _precreate,
    _quiet,
    _require_domain,
    _require_running,
    _snapshot_xml,
    _targets,
    _thaw_retrying,
    _vm_plan,
)
from kvmctl.snapshot._restore import _active_files, _revert
from kvmctl.spec import Cockpit
from kvmctl.state import history
from kvmctl.state.setlock import set_lock
from kvmctl.xml.snapshot import disk_chain

# --------------------------------------------------------------------------- one VM


def create(
    spec: Cockpit | str | Path,
    uri: str,
    vm: str,
    name: str,
    *,
    disk_only: bool = False,
    freeze: bool | None = None,
    progress: Progress | None = None,
) -> CreateResult:
    """Snapshot one running VM. `freeze` (default: for disk-only snapshots)
    quiesces the guest's file systems through its agent meanwhile."""
    check_name(name)
    spec = _load(spec)
    say = progress or _quiet
    with set_lock(spec.name):
        session, ops = _open(spec, uri)
        vp = _vm_plan(session, vm)
        records = _require_domain(ops, vp)
        check_create(vm, records, name, disk_only)
        refusals = (
            warm.disk_only_refusals({vm: vp.vm.boot.mode}, [vm])
            if disk_only
            else memory_snapshot_refusals(spec, [vm])
        )
        if refusals:
            raise UsageError(refusals[0])
        _require_running(ops, vp)
        frozen = disk_only if freeze is None else freeze
        tag = Tag(spec.name, vm, session.plan.spec_hash, None, frozen, time.time())
        where = _targets(ops, vp, disk_only)
        snap = _snapshot_xml(name, tag, where)
        t0 = time.monotonic()
        thaw = False
        made = _precreate(ops, snap, where)
        try:
            if frozen:
                say(vm, "freezing guest file systems")
                thaw = True
                ops.freeze(vp.domain)
            say(vm, f"taking {'disk-only ' if disk_only else ''}snapshot '{name}'")
            ops.create(vp.domain, snap, disk_only, reuse=bool(made))
        except BaseException:
            with suppress(KvmctlError):
                _drop_unused(ops, vp.domain, made)
            raise
        finally:
            if thaw:
                _thaw_retrying(ops, vp.domain)
        seconds = time.monotonic() - t0
        history.record(spec.name, "snapshot", {vm: seconds}, name=name)
    return CreateResult(
        spec.name,
        vm,
        name,
        "external" if disk_only else "internal",
        not disk_only,
        frozen,
        seconds,
        [d.source_file for d in snap.disks if d.source_file],
    )


def revert(
    spec: Cockpit | str | Path,
    uri: str,
    vm: str,
    name: str,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> RevertResult:
    """Bring one VM back to snapshot `name` (memory, disk, definition), running."""
    check_name(name)
    spec = _load(spec)
    with set_lock(spec.name):
        session, ops = _open(spec, uri)
        vp = _vm_plan(session, vm)
        record = check_revert(vm, _require_domain(ops, vp), name, _active_files(ops, vp))
        recorded = record.tag.spec_hash if record.tag else None
        note = check_spec(recorded, session.plan.spec_hash, force, f"snapshot '{name}'")
        return _revert(session, ops, [[vm]], {vm: record}, name, False, note, progress or _quiet)


def delete(
    spec: Cockpit | str | Path,
    uri: str,
    vm: str,
    name: str,
    *,
    progress: Progress | None = None,
) -> DeleteResult:
    """Delete one VM's snapshot; an external one is merged back first."""
    check_name(name)
    spec = _load(spec)
    say = progress or _quiet
    with set_lock(spec.name):
        t0 = time.monotonic()
        session, ops = _open(spec, uri)
        vp = _vm_plan(session, vm)
        record = check_delete(vm, _require_domain(ops, vp), name)
        how = _delete_one(ops, vp, record, say)
        return DeleteResult(spec.name, name, {vm: how}, {}, time.monotonic() - t0)


def _delete_one(ops: SnapshotOps, vp: VmPlan, record: SnapshotRecord, say: Progress) -> str:
    if record.kind == "internal":
        say(vp.name, f"deleting snapshot '{record.name}'")
        ops.delete(vp.domain, record.name)
        return "internal"
    if ops.state(vp.domain) not in (RUNNING, PAUSED):
        raise UsageError(
            f"VM '{vp.name}' is not running: its disk-only snapshot '{record.name}' is merged "
            "back by a block commit, which needs the VM running; start it with `kvmctl apply`"
        )
    live = ops.xml(vp.domain)
    for disk, overlay in record.overlays:
        step = commit_step(disk, overlay, disk_chain(live, disk))
        kind = "active commit and pivot" if step.active else "commit"
        say(vp.name, f"merging {os.path.basename(overlay)} into {step.base} ({kind})")
        ops.commit(vp.domain, step)
        live = ops.xml(vp.domain)
    ops.delete(vp.domain, record.name, metadata_only=True)
    for _disk, overlay in record.overlays:
        ops.delete_file(overlay)
    return f"merged {len(record.overlays)} overlay(s)"
