"""Pure logic of snapshots: names, what a snapshot is, the checks made before
anything is touched and the block commit that merges an overlay back. The
group snapshot's manifest and pause windows are in `snapshot_group`, the
qcow2 snapshot table in `qcow2`. No libvirt and no I/O here;
`kvmctl.snapshot` runs it.

A kvmctl snapshot carries a JSON *tag* in its libvirt description (set, VM,
spec hash, group), so `list` can tell group members and foreign snapshots
apart and a group can be found again even without its manifest file.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from kvmctl.errors import UsageError
from kvmctl.xml.snapshot import ChainLayer, DomainSnapshot, validate_snapshot_name

TAG_KEY = "kvmctl-snapshot"
Kind = Literal["internal", "external"]


# --------------------------------------------------------------------------- names


def check_name(name: str) -> str:
    """A snapshot or group name as a user typed it; UsageError (exit 2) if bad."""
    try:
        return validate_snapshot_name(name)
    except ValueError as err:
        raise UsageError(f"{err}; choose another name") from None


def overlay_path(volume_path: str, snapshot: str) -> str:
    """The overlay file of an external snapshot, next to the VM's data volume
    (always named from the volume, also for a second overlay):
    ``/pool/set-vm-data.qcow2`` + ``s1`` -> ``/pool/set-vm-data.s1.qcow2``."""
    check_name(snapshot)
    path = PurePosixPath(volume_path)
    stem = path.name[: -len(".qcow2")] if path.name.endswith(".qcow2") else path.name
    return str(path.with_name(f"{stem}.{snapshot}.qcow2"))


# --------------------------------------------------------------------------- the tag


@dataclass(frozen=True)
class Tag:
    """kvmctl's record inside a snapshot's description."""

    set_name: str
    vm: str
    spec_hash: str
    group: str | None = None
    frozen: bool = False  # guest file systems were frozen when it was taken
    instant: float | None = None  # wall clock, seconds since the epoch

    def encode(self) -> str:
        data = {TAG_KEY: 1, **asdict(self)}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None) -> Tag | None:
        """The tag of a description, or None for a snapshot kvmctl did not take."""
        if not text:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get(TAG_KEY) != 1:
            return None
        try:
            return cls(
                set_name=str(data["set_name"]),
                vm=str(data["vm"]),
                spec_hash=str(data["spec_hash"]),
                group=None if data.get("group") is None else str(data["group"]),
                frozen=bool(data.get("frozen", False)),
                instant=None if data.get("instant") is None else float(data["instant"]),
            )
        except (KeyError, TypeError, ValueError):
            return None


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SnapshotRecord:
    """One libvirt snapshot of one VM, as `list` shows it."""

    vm: str
    domain: str
    name: str
    created: int | None
    kind: Kind
    has_memory: bool
    state: str | None
    parent: str | None
    current: bool
    overlays: tuple[tuple[str, str], ...] = ()  # (disk, overlay file) of an external one
    tag: Tag | None = None
    size_bytes: int | None = None

    @property
    def group(self) -> str | None:
        return self.tag.group if self.tag else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "vm": self.vm,
            "domain": self.domain,
            "name": self.name,
            "created": self.created,
            "kind": self.kind,
            "memory": self.has_memory,
            "state": self.state,
            "parent": self.parent,
            "current": self.current,
            "group": self.group,
            "spec_hash": self.tag.spec_hash if self.tag else None,
            "frozen": self.tag.frozen if self.tag else None,
            "overlays": [{"disk": d, "file": f} for d, f in self.overlays],
            "size_bytes": self.size_bytes,
        }


def record_from_xml(vm: str, domain: str, xml: str, current: bool = False) -> SnapshotRecord:
    snap = DomainSnapshot.from_xml(xml)
    return SnapshotRecord(
        vm=vm,
        domain=domain,
        name=snap.name,
        created=snap.creation_time,
        kind=snap.kind,
        has_memory=snap.has_memory,
        state=snap.state,
        parent=snap.parent,
        current=current,
        overlays=tuple(
            (d.name, d.source_file)
            for d in snap.disks
            if d.snapshot == "external" and d.source_file
        ),
        tag=Tag.decode(snap.description),
    )


def find(records: Iterable[SnapshotRecord], name: str) -> SnapshotRecord | None:
    return next((r for r in records if r.name == name), None)


def _known(records: Sequence[SnapshotRecord]) -> str:
    return ", ".join(r.name for r in records) or "none"


# --------------------------------------------------------------------------- checks


def check_create(vm: str, records: Sequence[SnapshotRecord], name: str, disk_only: bool) -> None:
    """Refuse what libvirt would refuse later, or what would lose data."""
    check_name(name)
    if find(records, name) is not None:
        raise UsageError(
            f"VM '{vm}' already has a snapshot named '{name}': choose another name "
            f"or delete it first (kvmctl snapshot delete)"
        )
    external = [r.name for r in records if r.kind == "external"]
    if not disk_only and external:
        # An internal snapshot would be written into the newest overlay and
        # vanish when that overlay is merged back by `delete`.
        raise UsageError(
            f"VM '{vm}' has disk-only snapshot(s) {', '.join(external)}: a snapshot with "
            "memory is only taken on a disk without overlays; delete them first "
            "(their data is merged back) or use --disk-only"
        )


def check_revert(
    vm: str,
    records: Sequence[SnapshotRecord],
    name: str,
    active_files: Collection[str] = (),
) -> SnapshotRecord:
    """`active_files`: the images the VM's disks write to now. A disk-only
    snapshot is reverted by giving its overlay a fresh start, so it must be
    the newest one, whose overlay is what the disk writes to."""
    check_name(name)
    record = find(records, name)
    if record is None:
        raise UsageError(f"VM '{vm}' has no snapshot '{name}' (it has: {_known(records)})")
    if record.kind == "external":
        if any(f not in active_files for _d, f in record.overlays):
            newer = [r.name for r in records if r.kind == "external" and r.name != name]
            raise UsageError(
                f"snapshot '{name}' of VM '{vm}' is not its newest disk-only snapshot "
                f"({', '.join(newer) or 'the disk moved on'}): delete the newer ones first "
                "(their data is merged down), then revert"
            )
        return record
    external = [r.name for r in records if r.kind == "external"]
    if external:
        raise UsageError(
            f"VM '{vm}' has disk-only snapshot(s) {', '.join(external)} taken on top of "
            f"'{name}': delete them first (kvmctl snapshot delete merges their data back)"
        )
    return record


def backing_of(overlay_file: str, chain: Sequence[ChainLayer]) -> ChainLayer:
    """The image right below `overlay_file` in a disk's chain."""
    at = next((i for i, layer in enumerate(chain) if layer.file == overlay_file), None)
    if at is None or at + 1 >= len(chain):
        raise UsageError(f"overlay {overlay_file} is not in the disk's backing chain")
    return chain[at + 1]


def check_delete(
    vm: str, records: Sequence[SnapshotRecord], name: str, whole_group: bool = False
) -> SnapshotRecord:
    check_name(name)
    record = find(records, name)
    if record is None:
        raise UsageError(f"VM '{vm}' has no snapshot '{name}' (it has: {_known(records)})")
    if record.group is not None and not whole_group:
        raise UsageError(
            f"snapshot '{name}' of VM '{vm}' belongs to group snapshot '{record.group}': "
            f"delete the whole group with `kvmctl snapshot delete --all FILE {record.group}`"
        )
    if record.kind == "internal":
        external = [r.name for r in records if r.kind == "external"]
        if external:
            raise UsageError(
                f"snapshot '{name}' of VM '{vm}' lives in the disk image below the overlay(s) "
                f"of {', '.join(external)}: delete those first"
            )
    return record


def check_spec(recorded: str | None, current: str, force: bool, what: str) -> str | None:
    """A spec changed since the snapshot must be confirmed with --force.
    Returns a note to print when it was forced."""
    if recorded is None or recorded == current:
        return None
    message = (
        f"the spec changed since {what} was taken (spec hash {recorded} then, {current} now): "
        "reverting brings back the VMs' old definition"
    )
    if not force:
        raise UsageError(f"{message}; pass --force to revert anyway, then `kvmctl apply`")
    return f"{message}; run `kvmctl apply` to bring them to the current spec"


# --------------------------------------------------------------------------- block commit


@dataclass(frozen=True)
class CommitStep:
    """Merge an external snapshot's overlay into the image below it.

    ``active``: the overlay is the image the guest writes to, so it is an
    active commit followed by a pivot to the base; otherwise a plain commit,
    after which the newer overlay reads through to the base."""

    disk: str
    top: str  # libvirt's "vda[N]" notation
    base: str
    active: bool
    overlay_file: str


def commit_step(disk: str, overlay_file: str, chain: Sequence[ChainLayer]) -> CommitStep:
    at = next((i for i, layer in enumerate(chain) if layer.file == overlay_file), None)
    if at is None:
        raise UsageError(
            f"disk {disk} no longer uses overlay {overlay_file}: it cannot be merged back"
        )
    if at + 1 >= len(chain):
        raise UsageError(f"overlay {overlay_file} of disk {disk} has no image below it")
    top, base = chain[at], chain[at + 1]
    if top.index is None or base.index is None:
        raise UsageError(f"libvirt reports no block node index for disk {disk}'s backing chain")
    return CommitStep(disk, f"{disk}[{top.index}]", f"{disk}[{base.index}]", at == 0, overlay_file)


# --------------------------------------------------------------------------- summary


def summarize(records: Mapping[str, Sequence[SnapshotRecord]]) -> dict[str, dict[str, Any]]:
    """Per VM: how many snapshots, the newest one and the group it belongs to."""
    out: dict[str, dict[str, Any]] = {}
    for vm, recs in records.items():
        latest = max(recs, key=lambda r: (r.created or 0, r.current), default=None)
        out[vm] = {
            "count": len(recs),
            "latest": latest.name if latest else None,
            "latest_created": latest.created if latest else None,
            "latest_group": latest.group if latest else None,
        }
    return out
