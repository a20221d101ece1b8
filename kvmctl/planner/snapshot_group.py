"""Pure logic of a group snapshot: the members' pause windows, the manifest
that records the group, and the checks made before a group is taken or
reverted. No libvirt and no I/O here; `kvmctl.snapshot.group_create` and
`kvmctl.snapshot.group` run it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from kvmctl.errors import UsageError
from kvmctl.planner.snapshot import SnapshotRecord, check_create, check_name, find

MANIFEST_VERSION = 1


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
    return _since_first_pause_ms(items, [t.resume_end for t in items])


def pause_spread_ms(timings: Iterable[MemberTiming]) -> float:
    """First pause asked for to last pause done: the members' states differ by
    at most this much guest time (and by none once all are paused)."""
    items = list(timings)
    return _since_first_pause_ms(items, [t.pause_end for t in items])


def _since_first_pause_ms(items: list[MemberTiming], ends: list[float | None]) -> float:
    starts = [t.pause_start for t in items if t.pause_start is not None]
    done = [e for e in ends if e is not None]
    if not starts or not done:
        return 0.0
    return round((max(done) - min(starts)) * 1000, 3)


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


def latest_group(manifests: Iterable[Manifest]) -> str | None:
    newest = max(manifests, key=lambda m: m.instant, default=None)
    return newest.name if newest else None
