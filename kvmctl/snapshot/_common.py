"""Shared pieces of the snapshot operations: results, lookups, snapshot XML,
manifests and the parallel runner."""

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
from typing import Any
from urllib.parse import urlsplit

from kvmctl.adapters.snapshots import PAUSED, RUNNING, SnapshotOps
from kvmctl.errors import KvmctlError, UsageError
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.snapshot import SnapshotRecord, Tag, overlay_path, record_from_xml
from kvmctl.planner.snapshot_group import Manifest, manifest_relpath
from kvmctl.session import Session, open_session
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state.paths import snapshot_dir
from kvmctl.state.statefile import write_atomic
from kvmctl.xml.snapshot import DomainSnapshot, SnapshotDisk, disk_chain
from kvmctl.xml.storage import BackingStore, StorageVolume

Progress = Callable[[str, str], None]  # (vm, what is happening)


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
    write_atomic(path, manifest.to_json())
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
