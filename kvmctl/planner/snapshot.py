"""Pure logic of snapshots: names, what a snapshot is, the checks made before
anything is touched, the group manifest, pause-window arithmetic and the
qcow2 snapshot table. No libvirt and no I/O here; `kvmctl.snapshot` runs it.

A kvmctl snapshot carries a JSON *tag* in its libvirt description (set, VM,
spec hash, group), so `list` can tell group members and foreign snapshots
apart and a group can be found again even without its manifest file.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from kvmctl.errors import UsageError
from kvmctl.xml.snapshot import ChainLayer, DomainSnapshot, validate_snapshot_name

TAG_KEY = "kvmctl-snapshot"
MANIFEST_VERSION = 1
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


# --------------------------------------------------------------------------- timing


@dataclass
class MemberTiming:
    """Monotonic seconds of one VM's steps in a group snapshot."""

    pause_start: float | None = None
    pause_end: float | None = None
    snapshot_start: float | None = None
    snapshot_end: float | None = None
    resume_start: float | None = None
    resume_end: float | None = None


def pause_window_ms(timings: Iterable[MemberTiming]) -> float:
    """First pause asked for to last resume done: how long the set stood still."""
    items = list(timings)
    starts = [t.pause_start for t in items if t.pause_start is not None]
    ends = [t.resume_end for t in items if t.resume_end is not None]
    if not starts or not ends:
        return 0.0
    return round((max(ends) - min(starts)) * 1000, 3)


def pause_spread_ms(timings: Iterable[MemberTiming]) -> float:
    """First pause asked for to last pause done: the members' states differ by
    at most this much guest time (and by none once all are paused)."""
    items = list(timings)
    starts = [t.pause_start for t in items if t.pause_start is not None]
    ends = [t.pause_end for t in items if t.pause_end is not None]
    if not starts or not ends:
        return 0.0
    return round((max(ends) - min(starts)) * 1000, 3)


def spread_ms(instants: Iterable[float]) -> float:
    values = list(instants)
    return round((max(values) - min(values)) * 1000, 3) if values else 0.0


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class Member:
    vm: str
    domain: str
    snapshot: str
    paused_at: float | None = None  # wall clock, when its pause call returned
    resumed_at: float | None = None  # wall clock, when its resume call returned
    snapshot_ms: float | None = None
    pause_requested_at: float | None = None  # wall clock, when its pause call began


@dataclass(frozen=True)
class Manifest:
    """A group snapshot: every member taken while the whole set was paused."""

    set_name: str
    name: str
    spec_hash: str
    disk_only: bool
    frozen: bool
    instant: float  # wall clock when the last member was paused: the set's state
    pause_window_ms: float
    pause_spread_ms: float
    members: tuple[Member, ...]
    levels: tuple[tuple[str, ...], ...] = ()
    version: int = MANIFEST_VERSION

    @property
    def vms(self) -> list[str]:
        return [m.vm for m in self.members]

    def member(self, vm: str) -> Member | None:
        return next((m for m in self.members if m.vm == vm), None)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["members"] = {
            m.vm: {k: v for k, v in asdict(m).items() if k != "vm"} for m in self.members
        }
        data["levels"] = [list(level) for level in self.levels]
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            data = json.loads(text)
            members = tuple(
                Member(vm=vm, **{k: v for k, v in m.items() if k in _MEMBER_FIELDS})
                for vm, m in data["members"].items()
            )
            return cls(
                set_name=data["set_name"],
                name=data["name"],
                spec_hash=data["spec_hash"],
                disk_only=bool(data["disk_only"]),
                frozen=bool(data["frozen"]),
                instant=float(data["instant"]),
                pause_window_ms=float(data["pause_window_ms"]),
                pause_spread_ms=float(data["pause_spread_ms"]),
                members=members,
                levels=tuple(tuple(level) for level in data.get("levels", ())),
                version=int(data.get("version", MANIFEST_VERSION)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a kvmctl snapshot manifest: {err}") from None


_MEMBER_FIELDS = {
    "domain",
    "snapshot",
    "paused_at",
    "resumed_at",
    "snapshot_ms",
    "pause_requested_at",
}


def manifest_relpath(set_name: str, name: str) -> PurePosixPath:
    """Where a group's manifest lives below the snapshot directory."""
    check_name(name)
    return PurePosixPath(set_name) / f"{name}.json"


def manifest_from_tags(
    set_name: str, name: str, records: Mapping[str, SnapshotRecord]
) -> Manifest | None:
    """Rebuild a group from its members' tags when the manifest file is gone."""
    tags = {vm: r.tag for vm, r in records.items() if r.tag and r.tag.group == name}
    if not tags:
        return None
    first = next(iter(tags.values()))
    assert first is not None
    return Manifest(
        set_name=set_name,
        name=name,
        spec_hash=first.spec_hash,
        disk_only=all(records[vm].kind == "external" for vm in tags),
        frozen=first.frozen,
        instant=first.instant or 0.0,
        pause_window_ms=0.0,
        pause_spread_ms=0.0,
        members=tuple(Member(vm, records[vm].domain, records[vm].name) for vm in sorted(tags)),
    )


def check_group_create(
    name: str,
    records: Mapping[str, Sequence[SnapshotRecord]],
    disk_only: bool,
) -> None:
    """Every member must be able to take `name`; one sentence naming each culprit."""
    check_name(name)
    problems: list[str] = []
    for vm, recs in records.items():
        try:
            check_create(vm, recs, name, disk_only)
        except UsageError as err:
            problems.append(str(err))
    if problems:
        raise UsageError(f"group snapshot '{name}' cannot be taken: " + "; ".join(problems))


def check_group_members(
    manifest: Manifest,
    existing: Mapping[str, Sequence[SnapshotRecord] | None],
    verb: str,
) -> None:
    """Before a group revert: every member's domain and snapshot still exist.
    `existing[vm]` is None when the VM's domain is gone."""
    problems: list[str] = []
    for m in manifest.members:
        recs = existing.get(m.vm)
        if recs is None:
            problems.append(f"VM '{m.vm}' (domain {m.domain}) no longer exists")
        elif find(recs, m.snapshot) is None:
            problems.append(f"VM '{m.vm}' no longer has snapshot '{m.snapshot}'")
    if problems:
        raise UsageError(
            f"cannot {verb} group snapshot '{manifest.name}': "
            + "; ".join(problems)
            + "; nothing was changed"
        )


def revert_levels(levels: Sequence[Sequence[str]], members: Iterable[str]) -> list[list[str]]:
    """The spec's start levels restricted to the group's members, in order;
    members the spec no longer has come last."""
    wanted = set(members)
    out = [[vm for vm in level if vm in wanted] for level in levels]
    out = [level for level in out if level]
    placed = {vm for level in out for vm in level}
    rest = sorted(wanted - placed)
    return out + ([rest] if rest else [])


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


def latest_group(manifests: Iterable[Manifest]) -> str | None:
    newest = max(manifests, key=lambda m: m.instant, default=None)
    return newest.name if newest else None


# --------------------------------------------------------------------------- qcow2


QCOW2_MAGIC = b"QFI\xfb"
QCOW2_HEADER_BYTES = 72


@dataclass(frozen=True)
class Qcow2Snapshot:
    id: str
    name: str
    date: int
    vm_state_bytes: int
    disk_bytes: int | None


def qcow2_snapshot_table(header: bytes) -> tuple[int, int]:
    """(count, offset) of the internal snapshot table from a qcow2 header."""
    if len(header) < QCOW2_HEADER_BYTES or header[:4] != QCOW2_MAGIC:
        raise ValueError("not a qcow2 image")
    count, offset = struct.unpack_from(">IQ", header, 60)
    return count, offset


def parse_qcow2_snapshots(table: bytes, count: int) -> list[Qcow2Snapshot]:
    """The entries of a qcow2 snapshot table (QEMU's docs/interop/qcow2.txt)."""
    out: list[Qcow2Snapshot] = []
    pos = 0
    for _ in range(count):
        if pos + 40 > len(table):
            raise ValueError("qcow2 snapshot table is truncated")
        (id_len, name_len, date_sec, _nsec, _clock, vm_state, extra_len) = struct.unpack_from(
            ">HHIIQII", table, pos + 12
        )
        extra = table[pos + 40 : pos + 40 + extra_len]
        if len(extra) >= 8:
            vm_state = struct.unpack_from(">Q", extra, 0)[0]
        disk = struct.unpack_from(">Q", extra, 8)[0] if len(extra) >= 16 else None
        at = pos + 40 + extra_len
        ident = table[at : at + id_len].decode("utf-8", "replace")
        name = table[at + id_len : at + id_len + name_len].decode("utf-8", "replace")
        end = at + id_len + name_len
        if end > len(table):
            raise ValueError("qcow2 snapshot table is truncated")
        out.append(Qcow2Snapshot(ident, name, date_sec, vm_state, disk))
        pos = end + (-end % 8)
    return out
