"""Warm starts as the Applier runs them (`boot: {mode: warm}`; the decision
is kvmctl.planner.warm's): read what is there, discard a state that no
longer fits, restore one that does, and save a state once a VM that booted
cold is ready.

The saved state is a libvirt internal snapshot with memory (see
kvmctl.planner.warm for why a snapshot and not a save image): reverting it
brings back the VM's disk and memory together, paused; its record
(kvmctl.state.warm) says what it was taken for.
"""

from __future__ import annotations

import time
from contextlib import suppress

from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.errors import KvmctlError
from kvmctl.host.images import image_version
from kvmctl.planner import warm
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.snapshot import Tag, record_from_xml
from kvmctl.spec.loader import spec_hash
from kvmctl.state import warm as records
from kvmctl.xml.snapshot import DomainSnapshot, SnapshotDisk

# A restored guest is more than a few seconds off the host's clock only when
# setting it failed.
CLOCK_TOLERANCE_S = 5.0


def key(plan: VmPlan) -> warm.WarmKey:
    image = plan.vm.image
    return warm.WarmKey(
        spec_hash=spec_hash(plan.vm),
        image=image_version(image.builtin, image.path),
        definition=plan.fingerprint.restart_hash,
    )


class WarmStarts:
    def __init__(self, virt: Virt):
        self.ops = SnapshotOps(virt)

    def choose(self, plan: VmPlan, action: str) -> warm.BootChoice:
        record, unreadable = records.read(plan.set_name, plan.name)
        if plan.vm.boot.mode != "warm" and record is None and unreadable is None:
            return warm.BootChoice("cold")  # nothing to look at in libvirt
        snapshot, disk_only = False, tuple[str, ...]()
        if action != "create" and self.ops.exists(plan.domain):
            raw = self.ops.snapshots(plan.domain)
            snaps = [record_from_xml(plan.name, plan.domain, r.xml) for r in raw]
            snapshot = any(s.name == warm.SNAPSHOT for s in snaps)
            disk_only = warm.disk_only_names([(s.name, s.kind) for s in snaps])
        found = warm.Found(record, unreadable, snapshot, disk_only)
        return warm.choose(plan.vm.boot.mode, action, key(plan), found)

    def discard(self, plan: VmPlan) -> None:
        """The saved state and its record; the domain is stopped. The record
        goes first: a state without one is never restored, only removed."""
        records.remove(plan.set_name, plan.name)
        self.ops.delete(plan.domain, warm.SNAPSHOT)

    def restore_paused(self, plan: VmPlan) -> None:
        """QEMU started at the saved point (memory and disk), paused."""
        self.ops.revert_paused(plan.domain, warm.SNAPSHOT)

    def set_clock(self, plan: VmPlan, timeout: float) -> float:
        """After the resume: once the agent answers, the guest's clock set to
        the host's; returns the offset left (guest - host, seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            self.ops.wait_agent(plan.domain, max(deadline - time.monotonic(), 0.1))
            try:
                offset = self.ops.set_guest_clock(plan.domain)
                break
            except KvmctlError:
                # libvirt sees the restored agent channel close and open again
                # after a first ping may already have answered: ask again.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        if abs(offset) > CLOCK_TOLERANCE_S:
            raise KvmctlError(
                f"the clock of '{plan.domain}' is {offset:+.1f} s off the host's after "
                "guest-set-time"
            )
        return offset

    def save(self, plan: VmPlan) -> str:
        """Take the VM's saved state now (it is ready) and record it; says
        how it went. A failure is reported, never fatal: the VM runs on and
        its next start is cold."""
        k = key(plan)
        t0 = time.monotonic()
        tag = Tag(plan.set_name, plan.name, plan.spec_hash, None, False, time.time())
        try:
            snap = DomainSnapshot(
                name=warm.SNAPSHOT,
                description=tag.encode(),
                memory="internal",
                disks=tuple(
                    SnapshotDisk(name=d, snapshot="internal") for d in self.ops.disks(plan.domain)
                ),
            )
            self.ops.create(plan.domain, snap, disk_only=False)
            records.write(plan.set_name, plan.name, warm.WarmRecord(plan.domain, k, time.time()))
        except (KvmctlError, OSError) as err:
            with suppress(KvmctlError, OSError):
                self.discard(plan)
            return f"warm-start state not saved: {err}"
        return (
            f"warm-start state saved in {time.monotonic() - t0:.1f} s (VM spec hash {k.spec_hash})"
        )


def state_of(plan: VmPlan) -> dict[str, object] | None:
    """What `kvmctl status` shows of a VM's saved state (None: there is
    none): the VM spec hash it was taken for, and whether it is current
    (it fits the spec and image now, so the next start is warm)."""
    record, unreadable = records.read(plan.set_name, plan.name)
    if unreadable is not None:
        return {"current": False, "error": unreadable}
    if record is None:
        return None
    return {
        "spec_hash": record.key.spec_hash,
        "image": record.key.image,
        "taken_at": record.taken_at,
        "current": plan.vm.boot.mode == "warm" and record.key == key(plan),
    }
