"""Snapshots of one VM or of the whole cockpit: the public API behind
`kvmctl snapshot` (create, list, revert, delete).

One VM: an internal snapshot with memory (the guest's RAM and its qcow2 disk
in one file), or with `disk_only` an external one: the disk goes on a new
overlay file next to its volume. Deleting an external snapshot merges the
overlay back with a block commit (an active commit and a pivot when the
guest writes to it), so nothing written after the snapshot is lost.

The set (a *group* snapshot): guest file systems are frozen through the
agent, every VM is paused (in parallel threads), every VM's snapshot is
taken while all of them stand still, all resume and thaw. The members'
states are therefore one instant of the set by construction. A manifest
(set, spec hash, members, the instant, the pause window) is written to
``$KVMCTL_SNAPSHOT_DIR/<set>/<name>.json`` and each member's libvirt
description carries a tag naming the group. A failure half-way resumes and
thaws every VM and removes the members already taken: never a set left
paused or frozen, never half a group. Revert brings the VMs back paused,
then resumes them level by level in depends_on order, each one ready (its
agent answers, file systems thawed) before the next level starts.

libvirt 9.0 reverts internal snapshots only (and restarts QEMU to do it,
so real-time scheduling and NIC shaping are put back before the resume).
A disk-only snapshot is reverted by kvmctl: the VM is powered off, its
overlay starts afresh on the image below it (the disk as it was at the
snapshot) and the VM boots again; only the newest disk-only snapshot of a
VM can be reverted to.

Mutating calls hold the set's lock, as apply and destroy do.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.snapshots import PAUSED, RUNNING, SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.errors import ApplyError, KvmctlError, UsageError
from kvmctl.host import rt, threads
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.setlock import set_lock
from kvmctl.snapshots_plan import (
    QCOW2_HEADER_BYTES,
    Manifest,
    Member,
    MemberTiming,
    SnapshotRecord,
    Tag,
    backing_of,
    check_create,
    check_delete,
    check_group_create,
    check_group_members,
    check_name,
    check_revert,
    check_spec,
    commit_step,
    find,
    manifest_from_tags,
    manifest_relpath,
    overlay_path,
    parse_qcow2_snapshots,
    pause_spread_ms,
    pause_window_ms,
    qcow2_snapshot_table,
    record_from_xml,
    revert_levels,
    summarize,
)
from kvmctl.spec import Cockpit, load_spec
from kvmctl.xml.snapshot import DomainSnapshot, SnapshotDisk, disk_chain
from kvmctl.xml.storage import BackingStore, StorageVolume

if TYPE_CHECKING:
    # kvmctl.cockpit imports kvmctl.status, which may show snapshot_summary:
    # the session is imported when a call needs it, not at import time.
    from kvmctl.cockpit import Session

Progress = Callable[[str, str], None]  # (vm, what is happening)
DEFAULT_SNAPSHOT_DIR = "/var/lib/kvmctl/snapshots"


def snapshot_dir() -> Path:
    return Path(os.environ.get("KVMCTL_SNAPSHOT_DIR", DEFAULT_SNAPSHOT_DIR))


def _quiet(_vm: str, _what: str) -> None:
    pass


# --------------------------------------------------------------------------- results


@dataclass
class CreateResult:
    set_name: str
    vm: str
    name: str
    kind: str
    memory: bool
    frozen: bool
    seconds: float
    overlays: list[str] = field(default_factory=list)


@dataclass
class GroupResult:
    manifest: Manifest
    manifest_path: Path
    seconds: float
    freeze_ms: float
    thaw_ms: float


@dataclass
class RevertOutcome:
    vm: str
    domain: str
    snapshot: str
    reverted_at: float | None = None  # wall clock, revert done (domain paused)
    resumed_at: float | None = None
    ready_at: float | None = None
    ready_seconds: float | None = None
    thawed: int | None = None
    kind: str = "memory"  # memory: resumes where it was; disk: boots from the disk as it was
    notes: list[str] = field(default_factory=list)


@dataclass
class RevertResult:
    set_name: str
    name: str
    group: bool
    outcomes: dict[str, RevertOutcome]
    levels: list[list[str]]
    notes: list[str]
    seconds: float


@dataclass
class DeleteResult:
    set_name: str
    name: str
    deleted: dict[str, str]  # vm -> how ("internal", "merged N overlay(s)")
    skipped: dict[str, str]
    seconds: float


@dataclass
class Listing:
    set_name: str
    spec_hash: str
    snapshots: list[SnapshotRecord]
    groups: list[dict[str, Any]]


# --------------------------------------------------------------------------- helpers


def _load(spec: Cockpit | str | Path) -> Cockpit:
    return spec if isinstance(spec, Cockpit) else load_spec(spec)


def _open(spec: Cockpit, uri: str) -> tuple[Session, SnapshotOps]:
    from kvmctl.cockpit import open_session

    session = open_session(spec, uri)
    assert session.virt is not None
    return session, SnapshotOps(session.virt)


def _vm_plan(session: Session, vm: str) -> VmPlan:
    plan = session.plan.vms.get(vm)
    if plan is None:
        known = ", ".join(session.plan.vms) or "none"
        raise UsageError(f"no VM '{vm}' in cockpit '{session.spec.name}' (known: {known})")
    return plan


def _records(ops: SnapshotOps, vp: VmPlan) -> list[SnapshotRecord] | None:
    """The VM's snapshots, oldest first; None when its domain does not exist."""
    if not ops.exists(vp.domain):
        return None
    recs = [record_from_xml(vp.name, vp.domain, r.xml, r.current) for r in ops.snapshots(vp.domain)]
    return sorted(recs, key=lambda r: (r.created or 0, r.name))


def _require_domain(ops: SnapshotOps, vp: VmPlan) -> list[SnapshotRecord]:
    recs = _records(ops, vp)
    if recs is None:
        raise UsageError(
            f"VM '{vp.name}' has no domain ({vp.domain}) on this host: "
            "create it with `kvmctl apply`"
        )
    return recs


def _require_running(ops: SnapshotOps, vp: VmPlan) -> None:
    if ops.state(vp.domain) != RUNNING:
        raise UsageError(
            f"VM '{vp.name}' is not running: snapshots are taken of running VMs; "
            "start it with `kvmctl apply`"
        )


@dataclass(frozen=True)
class _Targets:
    """Where a VM's snapshot goes, looked up before any VM is paused."""

    disks: tuple[str, ...]
    base: str | None = None  # the data volume's path, for overlay names (disk-only)
    top: str | None = None  # the image the disk writes to now: the overlay's backing
    capacity: int | None = None
    pool: str | None = None


def _targets(ops: SnapshotOps, vp: VmPlan, disk_only: bool) -> _Targets:
    disks = ops.disks(vp.domain)
    if not disk_only:
        return _Targets(disks)
    if len(disks) != 1:
        raise UsageError(
            f"VM '{vp.name}' has {len(disks)} writable disks; disk-only snapshots handle one"
        )
    vol = vp.volume
    return _Targets(
        disks,
        base=ops.volume_path(vol.pool, vol.name),
        top=ops.active_image(vp.domain, disks[0]),
        capacity=ops.volume_capacity(vol.pool, vol.name),
        pool=vol.pool,
    )


def _precreate(ops: SnapshotOps, snap: DomainSnapshot, where: _Targets) -> list[str]:
    """Make a disk-only snapshot's overlay files beforehand, so taking the
    snapshot only opens them (VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT)."""
    made: list[str] = []
    for disk in snap.disks:
        if disk.source_file is None:
            continue
        assert where.top and where.capacity is not None and where.pool
        if ops.file_size(disk.source_file) is not None:
            raise UsageError(
                f"overlay {disk.source_file} already exists (left by an interrupted run?): "
                "remove it or choose another snapshot name"
            )
        volume = StorageVolume(
            name=os.path.basename(disk.source_file),
            capacity_bytes=where.capacity,
            format="qcow2",
            backing_store=BackingStore(path=where.top, format="qcow2"),
        )
        ops.precreate_overlay(where.pool, volume.to_xml())
        made.append(disk.source_file)
    return made


def _drop_unused(ops: SnapshotOps, domain: str, overlays: list[str]) -> None:
    """Delete precreated overlays the domain does not use (its snapshot failed)."""
    in_use = {layer.file for d in ops.disks(domain) for layer in disk_chain(ops.xml(domain), d)}
    for path in overlays:
        if path not in in_use:
            ops.delete_file(path)


def _snapshot_xml(name: str, tag: Tag, where: _Targets) -> DomainSnapshot:
    if where.base is None:
        return DomainSnapshot(
            name=name,
            description=tag.encode(),
            memory="internal",
            disks=tuple(SnapshotDisk(name=d, snapshot="internal") for d in where.disks),
        )
    return DomainSnapshot(
        name=name,
        description=tag.encode(),
        memory="no",
        disks=(
            SnapshotDisk(
                name=where.disks[0],
                snapshot="external",
                source_file=overlay_path(where.base, name),
                driver_type="qcow2",
            ),
        ),
    )


def _manifest_path(set_name: str, name: str) -> Path:
    return snapshot_dir() / manifest_relpath(set_name, name)


def _write_manifest(manifest: Manifest) -> Path:
    path = _manifest_path(manifest.set_name, manifest.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".json.tmp{os.getpid()}")
    tmp.write_text(manifest.to_json())
    os.replace(tmp, path)
    return path


def _read_manifest(set_name: str, name: str) -> Manifest | None:
    path = _manifest_path(set_name, name)
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as err:
        raise UsageError(f"{path} is damaged ({err}): remove it by hand") from None


def load_manifests(set_name: str) -> list[Manifest]:
    """Every group manifest kept for the set, oldest first (unreadable ones skipped)."""
    directory = snapshot_dir() / set_name
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        with suppress(OSError, ValueError):
            out.append(Manifest.from_json(path.read_text()))
    return sorted(out, key=lambda m: m.instant)


def _run(
    pool: ThreadPoolExecutor, fn: Callable[[str], Any], items: Sequence[str]
) -> dict[str, BaseException | None]:
    """`fn(item)` for every item at once: all threads start the call together."""
    if not items:
        return {}
    barrier = threading.Barrier(len(items))

    def call(item: str) -> Any:
        with suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)
        return fn(item)

    futures = {item: pool.submit(call, item) for item in items}
    return {item: f.exception() for item, f in futures.items()}


def _first_error(errors: dict[str, BaseException | None]) -> tuple[str, BaseException] | None:
    for item, err in errors.items():
        if err is not None:
            return item, err
    return None


def _say_error(err: BaseException) -> str:
    return str(err) if isinstance(err, KvmctlError) else f"{type(err).__name__}: {err}"


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM during a group operation unwinds like Ctrl-C, so the cleanup
    (resume, thaw, remove members) runs instead of leaving the set paused."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _is_local(uri: str) -> bool:
    return urlsplit(uri).hostname in (None, "", "localhost")


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


def _thaw_retrying(ops: SnapshotOps, domain: str, attempts: int = 3) -> int:
    """Thaw, retrying a refused agent; a gone domain has nothing to thaw."""
    for attempt in range(attempts):
        try:
            return ops.thaw(domain)
        except KvmctlError:
            if not ops.exists(domain) or ops.state(domain) not in (RUNNING, PAUSED):
                return 0
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)
    return 0


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
        return GroupResult(manifest, path, time.monotonic() - t_start, freeze_ms, thaw_ms)

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
        existing = {vm: _records(ops, vp) for vm, vp in plan.vms.items()}
        manifest = _read_manifest(plan.set_name, name) or manifest_from_tags(
            plan.set_name,
            name,
            {vm: r for vm, recs in existing.items() for r in (recs or []) if r.name == name},
        )
        if manifest is None:
            raise UsageError(f"cockpit '{plan.set_name}' has no group snapshot '{name}'")
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


def _active_files(ops: SnapshotOps, vp: VmPlan) -> set[str]:
    """The image files the VM's disks write to now (tops of their chains)."""
    xml = ops.xml(vp.domain, inactive=True)
    tops = (disk_chain(xml, d) for d in ops.disks(vp.domain))
    return {chain[0].file for chain in tops if chain and chain[0].file}


def _cold_revert(ops: SnapshotOps, vp: VmPlan, record: SnapshotRecord) -> None:
    """A disk-only snapshot has no memory to go back to: power the VM off,
    give the overlay a fresh start on the image below it (the disk as it was
    at the snapshot) and start the VM paused; it boots when resumed."""
    ops.virt.stop(vp.domain)
    xml = ops.xml(vp.domain, inactive=True)
    capacity = ops.volume_capacity(vp.volume.pool, vp.volume.name)
    for disk, overlay in record.overlays:
        below = backing_of(overlay, disk_chain(xml, disk))
        if below.file:
            backing = below.file
        else:
            assert below.pool and below.volume
            backing = ops.volume_path(below.pool, below.volume)
        ops.delete_file(overlay)
        volume = StorageVolume(
            name=os.path.basename(overlay),
            capacity_bytes=capacity,
            format="qcow2",
            backing_store=BackingStore(path=backing, format="qcow2"),
        )
        ops.precreate_overlay(vp.volume.pool, volume.to_xml())
    ops.virt.start_paused(vp.domain)


def _revert(
    session: Session,
    ops: SnapshotOps,
    levels: list[list[str]],
    records: dict[str, SnapshotRecord],
    name: str,
    group: bool,
    note: str | None,
    say: Progress,
) -> RevertResult:
    plan = session.plan
    t0 = time.monotonic()
    vms = [vm for level in levels for vm in level]
    outcomes = {
        vm: RevertOutcome(
            vm,
            plan.vms[vm].domain,
            records[vm].name,
            kind="memory" if records[vm].kind == "internal" else "disk",
        )
        for vm in vms
    }
    reverted: list[str] = []
    with ThreadPoolExecutor(max_workers=max(len(vms), 1), thread_name_prefix="revert") as pool:
        try:
            say("-", f"reverting {', '.join(vms)} to '{name}' (paused)")

            def back(vm: str) -> None:
                vp = plan.vms[vm]
                if records[vm].kind == "internal":
                    ops.revert_paused(vp.domain, records[vm].name, force=note is not None)
                else:
                    _cold_revert(ops, vp, records[vm])
                    outcomes[vm].notes.append("disk-only snapshot: the guest boots again")
                outcomes[vm].reverted_at = time.time()
                reverted.append(vm)

            failed = _first_error(_run(pool, back, vms))
            if failed is not None:
                raise ApplyError(f"revert of VM '{failed[0]}' failed: {_say_error(failed[1])}")
            for vm in vms:
                outcomes[vm].notes += _after_start(session, plan.vms[vm])
            for level in levels:
                say("-", f"resuming {', '.join(level)}")
                failed = _first_error(
                    _run(pool, lambda vm: _resume_ready(ops, plan.vms[vm], outcomes[vm]), level)
                )
                if failed is not None:
                    raise ApplyError(f"VM '{failed[0]}' did not come back: {_say_error(failed[1])}")
                for vm in level:
                    say(vm, f"ready after {outcomes[vm].ready_seconds or 0:.1f} s")
        except BaseException as err:
            problems = []
            for vm in reverted:
                try:
                    ops.resume(plan.vms[vm].domain)
                    if outcomes[vm].kind == "memory":
                        _thaw_retrying(ops, plan.vms[vm].domain)
                except KvmctlError as e:
                    problems.append(str(e))
            if isinstance(err, KeyboardInterrupt):
                raise
            done = ", ".join(reverted) or "none"
            extra = ("; " + "; ".join(problems)) if problems else ""
            raise ApplyError(
                f"revert to '{name}' failed half-way: {_say_error(err)}; VMs already reverted "
                f"({done}) were resumed{extra}"
            ) from None
    notes = [note] if note else []
    return RevertResult(plan.set_name, name, group, outcomes, levels, notes, time.monotonic() - t0)


def _after_start(session: Session, vp: VmPlan) -> list[str]:
    """What apply does to a freshly started QEMU besides libvirt's own setup:
    libvirt restarts QEMU on a revert, so real-time scheduling and NIC shaping
    are put back while the domain is still paused."""
    notes: list[str] = []
    if vp.realtime is not None and session.facts.rt_group_sched:
        pid = threads.qemu_pid(vp.domain)
        if pid is None:
            raise ApplyError(f"cannot find the QEMU process of '{vp.domain}' after the revert")
        steps: list[rt.RtStep] = []
        rt.make_realtime(
            threads.inspect(pid),
            vp.realtime.policy,
            vp.realtime.priority,
            vp.realtime.domain_runtime_us,
            vp.realtime.vcpu_runtime_us,
            steps,
        )
        notes.append(
            f"vCPU threads SCHED_{vp.realtime.policy.upper()} {vp.realtime.priority} again"
        )
    shaped = [n for n in vp.nics if n.bandwidth is not None]
    if shaped:
        from kvmctl.adapters.netlink import Netlink

        with Netlink() as nl:
            for nic in shaped:
                assert nic.bandwidth is not None
                inbound, outbound = nic.bandwidth.limits()
                nl.shape(nic.tap, inbound, outbound)
                notes.append(f"bandwidth of {nic.tap} shaped again")
    return notes


def _resume_ready(ops: SnapshotOps, vp: VmPlan, outcome: RevertOutcome) -> None:
    """Resume, then wait for the agent (the serial marker was printed before
    the snapshot, so it never comes again) and thaw what the snapshot froze.
    A VM that boots again (disk-only snapshot) is ready as `apply` sees it."""
    if outcome.kind == "disk":
        with ReadyWatch(ops.conn, vp.domain, vp.vm.ready.probe) as watch:
            ops.resume(vp.domain)
            t = time.monotonic()
            outcome.resumed_at = time.time()
            try:
                ready = watch.wait(vp.vm.ready.timeout)
            except NotReady as err:
                raise ApplyError(str(err)) from None
        outcome.ready_seconds = round(ready - t, 3)
        outcome.ready_at = outcome.resumed_at + outcome.ready_seconds
        return
    ops.resume(vp.domain)
    # Taken when the resume call returns: the guest's clock runs from here.
    t = time.monotonic()
    outcome.resumed_at = time.time()
    ops.wait_agent(vp.domain, vp.vm.ready.timeout)
    outcome.thawed = _thaw_retrying(ops, vp.domain)
    outcome.ready_seconds = round(time.monotonic() - t, 3)
    outcome.ready_at = outcome.resumed_at + outcome.ready_seconds


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
        existing = {vm: _records(ops, vp) for vm, vp in plan.vms.items()}
        manifest = _read_manifest(plan.set_name, name) or manifest_from_tags(
            plan.set_name,
            name,
            {vm: r for vm, recs in existing.items() for r in (recs or []) if r.name == name},
        )
        if manifest is None:
            raise UsageError(f"cockpit '{plan.set_name}' has no group snapshot '{name}'")
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
