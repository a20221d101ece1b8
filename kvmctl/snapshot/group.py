"""Group snapshots of the whole set once taken: found again (by its manifest, or
its members' tags when the file is gone), reverted, deleted.
"""

from __future__ import annotations

import time
from contextlib import suppress
from pathlib import Path

from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.errors import ApplyError, KvmctlError, UsageError
from kvmctl.planner.plan import Plan
from kvmctl.planner.snapshot import (
    SnapshotRecord,
    check_delete,
    check_name,
    check_revert,
    check_spec,
    find,
)
from kvmctl.planner.snapshot_group import (
    Manifest,
    check_group_members,
    manifest_from_tags,
    revert_levels,
)
from kvmctl.snapshot._common import (
    DeleteResult,
    Progress,
    RevertResult,
    _load,
    _manifest_path,
    _open,
    _quiet,
    _read_manifest,
    _records,
    _terminate_as_interrupt,
)
from kvmctl.snapshot._restore import _active_files, _revert
from kvmctl.snapshot.single import _delete_one
from kvmctl.spec import Cockpit
from kvmctl.state.setlock import set_lock


def _find_group(
    ops: SnapshotOps, plan: Plan, name: str
) -> tuple[dict[str, list[SnapshotRecord] | None], Manifest]:
    """Every VM's snapshots and the group's manifest: the file kvmctl wrote, or
    rebuilt from the members' description tags when the file is gone."""
    existing = {vm: _records(ops, vp) for vm, vp in plan.vms.items()}
    manifest = _read_manifest(plan.set_name, name) or manifest_from_tags(
        plan.set_name,
        name,
        {vm: r for vm, recs in existing.items() for r in (recs or []) if r.name == name},
    )
    if manifest is None:
        raise UsageError(f"cockpit '{plan.set_name}' has no group snapshot '{name}'")
    return existing, manifest


def revert_group(
    spec: Cockpit | str | Path,
    uri: str,
    name: str,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> RevertResult:
    """Bring every member back to the group's instant and the set back to
    running in depends_on order. Checks first, so a bad request changes nothing."""
    check_name(name)
    spec = _load(spec)
    with set_lock(spec.name), _terminate_as_interrupt():
        session, ops = _open(spec, uri)
        plan = session.plan
        existing, manifest = _find_group(ops, plan, name)
        missing = [m.vm for m in manifest.members if m.vm not in plan.vms]
        if missing:
            raise UsageError(
                f"group snapshot '{name}' has member(s) {', '.join(missing)} that the spec no "
                "longer has; nothing was changed"
            )
        check_group_members(manifest, existing, "revert")
        records = {
            m.vm: check_revert(
                m.vm, existing[m.vm] or [], m.snapshot, _active_files(ops, plan.vms[m.vm])
            )
            for m in manifest.members
        }
        note = check_spec(manifest.spec_hash, plan.spec_hash, force, f"group snapshot '{name}'")
        levels = revert_levels(plan.levels, manifest.vms)
        return _revert(session, ops, levels, records, name, True, note, progress or _quiet)


def delete_group(
    spec: Cockpit | str | Path,
    uri: str,
    name: str,
    *,
    progress: Progress | None = None,
) -> DeleteResult:
    """Delete every member of a group snapshot and its manifest. Members whose
    domain or snapshot is already gone are skipped and reported."""
    check_name(name)
    spec = _load(spec)
    say = progress or _quiet
    with set_lock(spec.name):
        t0 = time.monotonic()
        session, ops = _open(spec, uri)
        plan = session.plan
        existing, manifest = _find_group(ops, plan, name)
        deleted: dict[str, str] = {}
        skipped: dict[str, str] = {}
        problems: list[str] = []
        for m in manifest.members:
            recs = existing.get(m.vm)
            record = find(recs or [], m.snapshot)
            if m.vm not in plan.vms or recs is None or record is None:
                skipped[m.vm] = "domain gone" if recs is None else "snapshot gone"
                continue
            try:
                deleted[m.vm] = _delete_one(
                    ops, plan.vms[m.vm], check_delete(m.vm, recs, m.snapshot, True), say
                )
            except KvmctlError as err:
                problems.append(f"VM '{m.vm}': {err}")
        if problems:
            raise ApplyError(
                f"group snapshot '{name}' was only partly deleted: " + "; ".join(problems)
            )
        with suppress(FileNotFoundError):
            _manifest_path(plan.set_name, name).unlink()
        return DeleteResult(plan.set_name, name, deleted, skipped, time.monotonic() - t0)
