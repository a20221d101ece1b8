"""Warm start (`boot: {mode: warm}`): is a VM's saved state valid for the VM
as planned now, and does this start go warm (restore) or cold (boot)? Pure:
the caller reads the record, the libvirt snapshots and the image version,
and `kvmctl.cockpit.warm` carries the choice out.

The saved state is a libvirt internal snapshot with memory, named SNAPSHOT,
taken once the VM first became ready. Memory and disk are saved and
restored together, so restored memory never runs against a disk that moved
on after the save; the price is that every warm start discards the disk
writes made since the saved point.

A state is kept for one key: the VM's own spec hash, its image's version
and the restart settings the plan derives for it (CPU mode, NICs' MACs,
...: a restore brings back the QEMU the state was saved from, which only a
restart could change). Any difference discards it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

SNAPSHOT = "kvmctl-warm"
Path = Literal["warm", "cold"]


@dataclass(frozen=True)
class WarmKey:
    spec_hash: str  # the VM's own (kvmctl.spec.spec_hash of its VM section)
    image: str | None  # kvmctl.host.images.image_version; None: unreadable
    definition: str  # the plan's restart hash (kvmctl.planner.diff.Fingerprint)

    def changes_from(self, old: WarmKey) -> list[str]:
        """What differs from `old`, in words."""
        out = []
        if old.spec_hash != self.spec_hash:
            out.append(f"spec hash {old.spec_hash} -> {self.spec_hash}")
        if old.image != self.image:
            out.append(f"image version {_short(old.image)} -> {_short(self.image)}")
        if old.definition != self.definition:
            out.append("planned definition changed")
        return out


def _short(version: str | None) -> str:
    return "unknown" if version is None else version[:12]


@dataclass(frozen=True)
class WarmRecord:
    """What a VM's saved state was taken for, kept beside it (kvmctl.state.warm)."""

    domain: str
    key: WarmKey
    taken_at: float  # wall clock
    snapshot: str = SNAPSHOT

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    @classmethod
    def decode(cls, text: str) -> WarmRecord:
        """ValueError when `text` is not a record kvmctl wrote."""
        try:
            data = json.loads(text)
            key = data["key"]
            image = key["image"]
            record = cls(
                domain=str(data["domain"]),
                key=WarmKey(
                    spec_hash=str(key["spec_hash"]),
                    image=None if image is None else str(image),
                    definition=str(key["definition"]),
                ),
                taken_at=float(data["taken_at"]),
                snapshot=str(data["snapshot"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a warm-state record ({type(err).__name__}: {err})") from None
        if record.snapshot != SNAPSHOT:
            raise ValueError(f"names snapshot '{record.snapshot}', not '{SNAPSHOT}'")
        return record


@dataclass(frozen=True)
class Found:
    """What is there now for one VM."""

    record: WarmRecord | None = None
    unreadable: str | None = None  # why the record file could not be read
    snapshot: bool = False  # libvirt has the VM's SNAPSHOT
    disk_only: tuple[str, ...] = ()  # the VM's disk-only (external) snapshots


@dataclass(frozen=True)
class BootChoice:
    path: Path
    discard: bool = False  # remove the saved state and its record first
    save: bool = False  # take a saved state once the VM is ready
    reason: str = ""  # why it boots cold / why the state is discarded


def choose(mode: str, action: str, key: WarmKey, found: Found) -> BootChoice:
    """How a VM whose plan action is `action` starts. Only a defined,
    stopped domain ("start": an apply of a stopped VM, a supervisor restart)
    can start warm; a new or redefined one boots cold and saves afresh."""
    stale = found.record is not None or found.unreadable is not None or found.snapshot
    if mode != "warm":
        # Under disk-only snapshots the state can be deleted only once they are.
        discard = stale and not found.disk_only
        return BootChoice("cold", discard=discard, reason="boot.mode is cold" if discard else "")
    if found.disk_only:
        # The saved state lives in the image below their overlays: it can be
        # neither restored nor deleted nor taken again until they are merged.
        return BootChoice(
            "cold",
            reason=f"disk-only snapshot(s) {', '.join(found.disk_only)} sit on the disk: "
            "no warm start until they are deleted (kvmctl snapshot delete)",
        )
    save = key.image is not None
    if action != "start":
        what = "new domain" if action == "create" else "the domain is redefined"
        state = "its old saved state removed" if stale else "no saved state"
        return BootChoice("cold", discard=stale, save=save, reason=f"{what}: {state}")
    if found.unreadable is not None:
        return BootChoice(
            "cold", discard=True, save=save, reason=f"saved state unusable: {found.unreadable}"
        )
    if found.record is None:
        return BootChoice("cold", discard=found.snapshot, save=save, reason="no saved state yet")
    if key.image is None:
        return BootChoice("cold", discard=True, reason="the image's version cannot be read")
    changed = key.changes_from(found.record.key)
    if changed:
        return BootChoice(
            "cold", discard=True, save=save, reason=f"saved state outdated: {'; '.join(changed)}"
        )
    if not found.snapshot:
        return BootChoice(
            "cold", discard=True, save=save, reason=f"saved state missing (no snapshot {SNAPSHOT})"
        )
    return BootChoice("warm")


def after_failure(error: str) -> BootChoice:
    """A warm start that failed: its state is discarded, the VM boots cold and
    saves again once ready."""
    return BootChoice("cold", discard=True, save=True, reason=f"warm start failed: {error}")


def disk_only_names(kinds: Sequence[tuple[str, str]]) -> tuple[str, ...]:
    """(name, kind) of a VM's snapshots -> the names of the external ones."""
    return tuple(name for name, kind in kinds if kind == "external")


def disk_only_refusals(modes: Mapping[str, str], names: Iterable[str]) -> list[str]:
    """A disk-only snapshot of a warm VM (`modes`: VM -> boot.mode) would put
    its saved state below an overlay, where it can be neither restored nor
    deleted nor taken again: refused up front (exit 2), naming the field."""
    return [
        f"VM '{vm}' starts warm (vms.{vm}.boot.mode: warm): a disk-only snapshot would leave "
        "its saved state below an overlay, unusable; take a snapshot with memory, or set "
        "boot.mode cold first"
        for vm in names
        if modes.get(vm) == "warm"
    ]
