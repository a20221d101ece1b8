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

from kvmctl.snapshot._common import (
    CreateResult,
    DeleteResult,
    GroupResult,
    Listing,
    Progress,
    RevertOutcome,
    RevertResult,
    load_manifests,
)
from kvmctl.snapshot.group import delete_group, revert_group
from kvmctl.snapshot.group_create import create_group
from kvmctl.snapshot.listing import latest_group, list_snapshots, snapshot_summary
from kvmctl.snapshot.single import create, delete, revert

__all__ = [
    "CreateResult",
    "DeleteResult",
    "GroupResult",
    "Listing",
    "Progress",
    "RevertOutcome",
    "RevertResult",
    "create",
    "create_group",
    "delete",
    "delete_group",
    "latest_group",
    "list_snapshots",
    "load_manifests",
    "revert",
    "revert_group",
    "snapshot_summary",
]
