"""Group snapshots of the whole set: take one (revert and delete are in
`kvmctl.snapshot.group`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

from kvmctl.adapters.snapshots import PAUSED, RUNNING, SnapshotOps
from kvmctl.errors import ApplyError, UsageError
from kvmctl.planner import warm
from kvmctl.planner.channels import memory_snapshot_refusals
from kvmctl.planner.snapshot import (
    SnapshotRecord,
    Tag,
    check_name,
    find,
)
from kvmctl.planner.snapshot_group import (
    Manifest,
    Member,
    MemberTiming,
    check_group_create,
    pause_spread_ms,
    pause_window_ms,
)
from kvmctl.session import Session
from kvmctl.snapshot._common import (
    GroupResult,
    Progress,
    _drop_unused,
    _first_error,
    _load,
    _manifest_path,
    _open,
    _precreate,
    _quiet,
    _read_manifest,
    _records,
    _run,
    _say_error,
    _snapshot_xml,
    _Targets,
    _targets,
    _terminate_as_interrupt,
    _thaw_retrying,
    _write_manifest,
)
from kvmctl.snapshot.single import _delete_one
from kvmctl.spec import Cockpit
from kvmctl.state import history
from kvmctl.state.setlock import set_lock
from kvmctl.xml.snapshot import DomainSnapshot

# --------------------------------------------------------------------------- the set


def create_group(
    spec: Cockpit | str | Path,
    uri: str,
    name: str,
    *,
    disk_only: bool = False,
    freeze: bool = True,
    progress: Progress | None = None,
) -> GroupResult:
    """Snapshot every VM of the set at one instant (see the module docstring)."""
    check_name(name)
    spec = _load(spec)
    with set_lock(spec.name), _terminate_as_interrupt():
        session, ops = _open(spec, uri)
        return _GroupCreate(session, ops, name, disk_only, freeze, progress or _quiet).run()


class _GroupCreate:
    def __init__(
        self,
        session: Session,
        ops: SnapshotOps,
        name: str,
        disk_only: bool,
        freeze: bool,
        say: Progress,
    ):
        self.session = session
        self.ops = ops
        self.name = name
        self.disk_only = disk_only
        self.freeze = freeze
        self.say = say
        self.plan = session.plan
        self.vms = list(self.plan.vms)
        self.timing = {vm: MemberTiming() for vm in self.vms}
        self.frozen: set[str] = set()  # freeze was attempted: thaw on every path
        self.inactive_xml: dict[str, str] = {}
        self.snaps: dict[str, DomainSnapshot] = {}
        self.targets: dict[str, _Targets] = {}
        self.precreated: dict[str, list[str]] = {}
        self.wall0 = time.time()
        self.mono0 = time.monotonic()

    def _wall(self, mono: float | None) -> float | None:
        return None if mono is None else round(self.wall0 + (mono - self.mono0), 6)

    def _check(self) -> None:
        problems: list[str] = []
        records: dict[str, list[SnapshotRecord]] = {}
        if not self.vms:
            raise UsageError(f"cockpit '{self.plan.set_name}' has no VMs on this host")
        for vm in self.vms:
            vp = self.plan.vms[vm]
            recs = _records(self.ops, vp)
            if recs is None:
                problems.append(f"VM '{vm}' has no domain: create it with `kvmctl apply`")
                continue
            if self.ops.state(vp.domain) != RUNNING:
                problems.append(f"VM '{vm}' is not running")
            records[vm] = recs
        if problems:
            raise UsageError(
                f"group snapshot '{self.name}' cannot be taken: " + "; ".join(problems)
            )
        manifest = _read_manifest(self.plan.set_name, self.name)
        if manifest is not None and any(
            find(records.get(m.vm, []), m.snapshot) for m in manifest.members
        ):
            raise UsageError(
                f"cockpit '{self.plan.set_name}' already has a group snapshot '{self.name}': "
                "choose another name or delete it first (kvmctl snapshot delete --all)"
            )
        check_group_create(self.name, records, self.disk_only)
        spec = self.session.spec
        refusals = (
            warm.disk_only_refusals({n: v.boot.mode for n, v in spec.vms.items()}, self.plan.vms)
            if self.disk_only
            else memory_snapshot_refusals(spec, self.plan.vms)
        )
        if refusals:
            raise UsageError("; ".join(refusals))

    def run(self) -> GroupResult:
        self._check()
        t_start = time.monotonic()
        for vm in self.vms:
            vp = self.plan.vms[vm]
            self.inactive_xml[vm] = self.ops.xml(vp.domain, inactive=True)
            self.targets[vm] = _targets(self.ops, vp, self.disk_only)
        freeze_ms = thaw_ms = 0.0
        with ThreadPoolExecutor(max_workers=len(self.vms), thread_name_prefix="snap") as pool:
            try:
                if self.disk_only:
                    self._precreate()
                if self.freeze:
                    t = time.monotonic()
                    self.say("-", "freezing guest file systems")
                    self.frozen = set(self.vms)
                    self._stage(pool, "freeze", lambda vm: self.ops.freeze(self._dom(vm)))
                    freeze_ms = (time.monotonic() - t) * 1000
                self._stage(pool, "pause", self._pause)
                instant = max(t.pause_end for t in self.timing.values() if t.pause_end)
                self.say("-", f"all {len(self.vms)} VMs paused; taking snapshots")
                self._prepare(self._wall(instant) or time.time())
                self._stage(pool, "snapshot", self._snapshot)
                self._stage(pool, "resume", self._resume)
                if self.frozen:
                    t = time.monotonic()
                    self._stage(pool, "thaw", self._thaw)
                    thaw_ms = (time.monotonic() - t) * 1000
                manifest = self._manifest(instant)
                path = _write_manifest(manifest)
            except BaseException as err:
                problems = self._rollback(pool)
                if isinstance(err, KeyboardInterrupt):
                    raise
                extra = ("; cleanup: " + "; ".join(problems)) if problems else ""
                raise ApplyError(
                    f"group snapshot '{self.name}' of '{self.plan.set_name}' failed and was "
                    f"rolled back (every VM resumed and thawed, members removed): "
                    f"{_say_error(err)}{extra}"
                ) from None
        self.say(
            "-",
            f"group snapshot '{self.name}' taken; pause window {manifest.pause_window_ms:.0f} ms",
        )
        seconds = time.monotonic() - t_start
        # Each member's snapshot took the whole group operation: they stood still together.
        history.record(
            self.plan.set_name, "snapshot", dict.fromkeys(self.vms, seconds), name=self.name
        )
        return GroupResult(manifest, path, seconds, freeze_ms, thaw_ms)

    def _dom(self, vm: str) -> str:
        return self.plan.vms[vm].domain

    def _stage(self, pool: ThreadPoolExecutor, what: str, fn: Callable[[str], Any]) -> None:
        failed = _first_error(_run(pool, fn, self.vms))
        if failed is not None:
            vm, err = failed
            raise ApplyError(f"{what} of VM '{vm}' failed: {_say_error(err)}")

    def _pause(self, vm: str) -> None:
        t = self.timing[vm]
        t.pause_start = time.monotonic()
        self.ops.suspend(self._dom(vm))
        t.pause_end = time.monotonic()

    def _precreate(self) -> None:
        """Overlay files made before any VM is frozen or paused; their snapshot
        XML is rebuilt with the instant later (same paths)."""
        for vm in self.vms:
            tag = Tag(self.plan.set_name, vm, self.plan.spec_hash, self.name, self.freeze)
            made = _precreate(
                self.ops, _snapshot_xml(self.name, tag, self.targets[vm]), self.targets[vm]
            )
            self.precreated[vm] = made

    def _prepare(self, instant: float) -> None:
        """Pure work only: the set is paused while this runs."""
        for vm in self.vms:
            tag = Tag(self.plan.set_name, vm, self.plan.spec_hash, self.name, self.freeze, instant)
            self.snaps[vm] = _snapshot_xml(self.name, tag, self.targets[vm])

    def _snapshot(self, vm: str) -> None:
        t = self.timing[vm]
        t.snapshot_start = time.monotonic()
        self.ops.create(
            self._dom(vm), self.snaps[vm], self.disk_only, reuse=bool(self.precreated.get(vm))
        )
        t.snapshot_end = time.monotonic()

    def _resume(self, vm: str) -> None:
        t = self.timing[vm]
        t.resume_start = time.monotonic()
        self.ops.resume(self._dom(vm))
        t.resume_end = time.monotonic()
        # resume() leaves a domain alone that is not paused: one whose QEMU died
        # during the window would pass unnoticed, and the group would claim it.
        if self.ops.state(self._dom(vm)) != RUNNING:
            raise ApplyError(f"VM '{vm}' stopped during the group snapshot (its QEMU is gone)")

    def _thaw(self, vm: str) -> None:
        _thaw_retrying(self.ops, self._dom(vm))
        self.frozen.discard(vm)

    def _manifest(self, instant: float) -> Manifest:
        members = []
        for vm in self.vms:
            t = self.timing[vm]
            snap_ms = None
            if t.snapshot_start is not None and t.snapshot_end is not None:
                snap_ms = round((t.snapshot_end - t.snapshot_start) * 1000, 3)
            members.append(
                Member(
                    vm,
                    self._dom(vm),
                    self.name,
                    self._wall(t.pause_end),
                    self._wall(t.resume_end),
                    snap_ms,
                    self._wall(t.pause_start),
                )
            )
        return Manifest(
            set_name=self.plan.set_name,
            name=self.name,
            spec_hash=self.plan.spec_hash,
            disk_only=self.disk_only,
            frozen=self.freeze,
            instant=self._wall(instant) or time.time(),
            pause_window_ms=pause_window_ms(self.timing.values()),
            pause_spread_ms=pause_spread_ms(self.timing.values()),
            members=tuple(members),
            levels=tuple(tuple(level) for level in self.plan.levels),
        )

    def _rollback(self, pool: ThreadPoolExecutor) -> list[str]:
        """Resume, thaw, remove members: each step for every VM, errors collected."""
        problems: list[str] = []

        def alive(vm: str) -> bool:
            dom = self._dom(vm)
            return self.ops.exists(dom) and self.ops.state(dom) in (RUNNING, PAUSED)

        def resume(vm: str) -> None:
            if alive(vm):
                self.ops.resume(self._dom(vm))

        def thaw(vm: str) -> None:
            if alive(vm):
                _thaw_retrying(self.ops, self._dom(vm))

        # Every member was running when the group began: resume any that is
        # paused now, also one whose pause call failed after taking effect.
        for what, fn, vms in (
            ("resume", resume, list(self.vms)),
            ("thaw", thaw, sorted(self.frozen)),
            ("remove member", self._remove_member, list(self.vms)),
        ):
            for vm, err in _run(pool, fn, vms).items():
                if err is not None:
                    problems.append(f"{what} of VM '{vm}': {_say_error(err)}")
        with suppress(OSError):
            _manifest_path(self.plan.set_name, self.name).unlink()
        return problems

    def _remove_member(self, vm: str) -> None:
        vp = self.plan.vms[vm]
        if not self.ops.exists(vp.domain):
            for path in self.precreated.get(vm, []):
                self.ops.delete_file(path)
            return
        records = _records(self.ops, vp) or []
        record = find(records, self.name)
        if record is None:
            _drop_unused(self.ops, vp.domain, self.precreated.get(vm, []))
            return
        if record.kind == "internal" or self.ops.state(vp.domain) in (RUNNING, PAUSED):
            _delete_one(self.ops, vp, record, _quiet)
            return
        # The VM died after its overlay was made: it never ran on the overlay,
        # so the old definition is put back and the overlay dropped.
        self.ops.virt.define(self.inactive_xml[vm])
        self.ops.delete(vp.domain, record.name, metadata_only=True)
        for _disk, overlay in record.overlays:
            self.ops.delete_file(overlay)
