"""Remove one of kvmctl's domains: stop it, undefine it, delete its volumes
and the overlay files its disk-only snapshots left; used by destroy and by
an apply's delete actions."""

from __future__ import annotations

from collections.abc import Callable

from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.xml.domain import Domain


def destroy_domain(
    virt: Virt, name: str, grace: float = 0, say: Callable[[str], None] | None = None
) -> list[str]:
    """Stop (a clean shutdown first for `grace` seconds) and undefine one of
    kvmctl's domains and delete the volumes it used. Returns the deleted
    volume names; `say` hears how it stopped."""
    removed: list[str] = []
    dom = virt.lookup(name)
    volumes: list[tuple[str, str]] = []
    overlays: list[str] = []
    snapshots = SnapshotOps(virt)
    if dom is not None:
        parsed = Domain.from_xml(virt.xml(name, inactive=True))
        volumes = [
            (d.source_pool, d.source_volume)
            for d in parsed.devices.disks
            if d.source_pool and d.source_volume
        ]
        # After a disk-only snapshot the disk is an overlay file with the data
        # volume below it; undefine drops the snapshot metadata, so read both first.
        chained, overlays = snapshots.owned_images(name)
        volumes += [v for v in chained if v not in volumes]
    how = virt.stop(name, grace)
    if how and say is not None:
        say(how)
    virt.undefine(name)
    for pool, vol in volumes:
        virt.delete_volume(pool, vol)
        removed.append(vol)
    for path in overlays:
        if snapshots.delete_file(path):
            removed.append(path.rsplit("/", 1)[-1])
    return removed
