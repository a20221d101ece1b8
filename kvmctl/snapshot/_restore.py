"""Bringing reverted VMs back: cold revert of disk-only snapshots, real-time
and shaping after QEMU restarts, resume level by level with readiness."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.cockpit import poststart
from kvmctl.errors import ApplyError, KvmctlError
from kvmctl.host import channels as host_channels
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.snapshot import (
    SnapshotRecord,
    backing_of,
)
from kvmctl.session import Session
from kvmctl.snapshot._common import (
    Progress,
    RevertOutcome,
    RevertResult,
    _first_error,
    _run,
    _say_error,
    _thaw_retrying,
)
from kvmctl.xml.snapshot import disk_chain
from kvmctl.xml.storage import BackingStore, StorageVolume


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
                    if not session.remote:
                        # The VM boots again: its region files and sockets as apply
                        # makes them (after a host reboot QEMU would make them 0644).
                        host_channels.prepare(vp.channels)
                    _cold_revert(ops, vp, records[vm])
                    outcomes[vm].notes.append("disk-only snapshot: the guest boots again")
                outcomes[vm].reverted_at = time.time()
                reverted.append(vm)

            failed = _first_error(_run(pool, back, vms))
            if failed is not None:
                raise ApplyError(f"revert of VM '{failed[0]}' failed: {_say_error(failed[1])}")
            if not session.remote:
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
    """libvirt starts a new QEMU on a revert: the post-start step runs again
    while the domain is still paused (on this host only; a remote host's QEMU
    is out of reach, as for apply)."""
    with ExitStack() as stack:
        return poststart.after_start(
            vp,
            rt_by_thread=session.facts.rt_group_sched,
            netlink=lambda: stack.enter_context(Netlink()),
            rt_steps=[],
        )


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
