"""Desired VMs vs what runs -> ordered actions (pure).

Settings are hashed in groups. A changed group from RESTART_GROUPS needs the
domain redefined and restarted; the others are applied to the running domain
(libvirt can change CPU shares/quota, pins, block I/O limits and metadata
live). The group names are what `kvmctl plan` shows as the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from kvmctl.planner.live import LiveState

ActionKind = Literal["create", "start", "update-live", "restart", "delete", "unchanged"]

RESTART_GROUPS = (
    "vcpus",
    "cpu-mode",
    "realtime",
    "memory",
    "image",
    "disk",
    "networks",
    "display",
    "watchdog",
    "virt-type",
    "channels",
)
LIVE_GROUPS = ("shares", "cap", "pins", "iotune", "labels", "rt-budget")


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    vm: str
    domain: str
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fingerprint:
    """Per-group hashes of one VM's planned settings."""

    groups: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, settings: dict[str, Any]) -> Fingerprint:
        unknown = set(settings) - set(RESTART_GROUPS) - set(LIVE_GROUPS)
        if unknown:
            raise ValueError(f"unknown settings group(s): {sorted(unknown)}")
        return cls({k: _hash(v) for k, v in sorted(settings.items())})

    def _part(self, names: tuple[str, ...]) -> str:
        # A group a VM does not use (channels) is left out rather than hashed
        # empty, so adding a group changes no existing VM's hash.
        return _hash({k: self.groups[k] for k in names if k in self.groups})

    @property
    def restart_hash(self) -> str:
        return self._part(RESTART_GROUPS)

    @property
    def live_hash(self) -> str:
        return self._part(LIVE_GROUPS)


def diff(
    set_name: str,
    desired: dict[str, tuple[str, Fingerprint]],
    live: LiveState,
) -> list[Action]:
    """`desired` maps VM name -> (domain name, fingerprint). Deletes come first
    (they free CPUs and hugepages), then everything else in the given order."""
    current = live.of_set(set_name)
    actions: list[Action] = [
        Action("delete", vm, dom.name, ("no longer in the spec",))
        for vm, dom in sorted(current.items())
        if vm not in desired
    ]
    for vm, (domain, fp) in desired.items():
        dom = current.get(vm)
        if dom is None:
            actions.append(Action("create", vm, domain))
            continue
        if dom.restart_hash != fp.restart_hash:
            changed = _changed(dom.groups, fp.groups, RESTART_GROUPS)
            actions.append(Action("restart", vm, domain, changed))
        elif not dom.active:
            actions.append(Action("start", vm, domain, ("defined but not running",)))
        elif dom.live_hash != fp.live_hash:
            actions.append(
                Action("update-live", vm, domain, _changed(dom.groups, fp.groups, LIVE_GROUPS))
            )
        else:
            actions.append(Action("unchanged", vm, domain))
    return actions


def _changed(old: dict[str, str], new: dict[str, str], names: tuple[str, ...]) -> tuple[str, ...]:
    changed = tuple(n for n in names if old.get(n) != new.get(n))
    return changed or ("settings changed",)


def _hash(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
