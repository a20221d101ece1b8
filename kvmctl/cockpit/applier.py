"""Run a plan through the adapters: bridges, storage, domains, readiness.

Idempotent (the plan's diff decides what to do), ordered by depends_on levels,
parallel inside a level, and journaled: when anything fails, everything this
run created or changed is undone and what existed before is left as it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.snapshots import SnapshotOps
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit import poststart
from kvmctl.cockpit.bridges import apply_bridges
from kvmctl.cockpit.journal import Journal
from kvmctl.cockpit.retune import retune
from kvmctl.cockpit.seed import seed_iso
from kvmctl.cockpit.warm import WarmStarts
from kvmctl.errors import ApplyError, KvmctlError
from kvmctl.host import channels as host_channels
from kvmctl.host import rt
from kvmctl.planner import deadline
from kvmctl.planner.cloudinit import SeedPlan
from kvmctl.planner.diff import Action
from kvmctl.planner.domain import build_domain, build_volume
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.planner.warm import BootChoice, after_failure
from kvmctl.session import Session
from kvmctl.xml.domain import Domain
from kvmctl.xml.storage import StoragePool, StorageVolume

Progress = Callable[[str, str], None]  # (vm, what is happening)


class _DependencyFailed(Exception):
    """A VM was not started because a VM it depends on (or a sibling) failed."""


@dataclass
class VmOutcome:
    vm: str
    action: str
    started_at: float | None = None  # wall clock, when resumed
    ready_at: float | None = None
    ready_seconds: float | None = None
    # From the start of the run (see Applier's `since`) to ready, and its ready.deadline.
    since_apply_s: float | None = None
    deadline_s: float | None = None
    deadline_met: bool | None = None
    # "warm" (restored from its saved state) or "cold" (booted), when it started.
    boot: str | None = None
    fallback: str | None = None  # why a warm start failed and the VM booted cold
    notes: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    set_name: str
    outcomes: dict[str, VmOutcome]
    bridges: list[tuple[str, str]]  # (action, bridge)
    notes: list[str]
    seconds: float
    hosts: dict[str, str] = field(default_factory=dict)  # VM -> host, in a multi-host set

    @property
    def changed(self) -> bool:
        return any(o.action != "unchanged" for o in self.outcomes.values()) or any(
            a != "unchanged" for a, _ in self.bridges
        )


class Applier:
    def __init__(
        self,
        virt: Virt,
        plan: Plan,
        *,
        netlink: Netlink | None = None,
        rt_by_thread: bool,
        pool_path: str,
        host_cpus: int,
        progress: Progress | None = None,
        on_this_host: bool = True,
        since: float | None = None,
    ):
        self.virt = virt
        self.plan = plan
        self.netlink = netlink
        self.rt_by_thread = rt_by_thread
        self.pool_path = pool_path
        self.host_cpus = host_cpus
        # A remote host's QEMU threads are out of reach: only libvirt applies there.
        self.on_this_host = on_this_host
        self.progress = progress or (lambda _vm, _what: None)
        # When boot deadlines start counting (time.monotonic()); None: when run() begins.
        self.since = since
        self.journal = Journal()
        self.warm = WarmStarts(virt)
        self.notes: list[str] = []
        # One netlink socket, used from the VM threads one at a time.
        self._net_lock = threading.Lock()

    def run(self, commit: bool = True) -> ApplyResult:
        """Apply the plan; on failure undo it and raise ApplyError. With
        `commit` False the undo steps are kept after success, for a caller
        applying several hosts to `rollback()` when a later host fails."""
        t0 = time.monotonic()
        self.since = t0 if self.since is None else self.since
        outcomes: dict[str, VmOutcome] = {}
        actions = {a.vm: a for a in self.plan.actions}
        try:
            bridges = apply_bridges(self.plan, "create", self.netlink, self.journal, self.progress)
            if any(a.kind in ("create", "restart") for a in actions.values()):
                self._pool()
            outcomes.update(self._vms([a for a in actions.values() if a.kind != "delete"]))
            for action in actions.values():
                if action.kind == "delete":
                    self._delete(action)
                    outcomes[action.vm] = VmOutcome(action.vm, "delete")
            bridges += apply_bridges(self.plan, "delete", self.netlink, self.journal, self.progress)
            if self.on_this_host:
                # Channels that left the spec: their members now run without them.
                for name in self.plan.channels.stale:
                    host_channels.remove(name)
        except BaseException as err:
            failures = self.journal.rollback()
            if isinstance(err, KeyboardInterrupt):
                raise
            cause = str(err) if isinstance(err, KvmctlError) else f"{type(err).__name__}: {err}"
            extra = ("; " + "; ".join(failures)) if failures else ""
            raise ApplyError(
                f"apply of '{self.plan.set_name}' failed and was rolled back: {cause}{extra}"
            ) from None
        if commit:
            self.journal.forget()
        return ApplyResult(self.plan.set_name, outcomes, bridges, self.notes, time.monotonic() - t0)

    def rollback(self) -> list[str]:
        """Undo a successful uncommitted run; returns the steps that failed."""
        return self.journal.rollback()

    # --- infrastructure ------------------------------------------------------------

    def _pool(self) -> None:
        any_plan = next(iter(self.plan.vms.values()))
        name = any_plan.volume.pool
        xml = StoragePool(name=name, target_path=self.pool_path).to_xml()
        if self.virt.ensure_pool(xml, name):
            self.journal.record(f"create storage pool {name}", lambda: self.virt.remove_pool(name))

    # --- VMs -----------------------------------------------------------------------

    def _vms(self, todo: list[Action]) -> dict[str, VmOutcome]:
        """Each VM starts as soon as the VMs it depends on are ready, not when
        its whole level is: a slow sibling does not hold back a dependant."""
        if not todo:
            return {}
        by_vm = {a.vm: a for a in todo}
        order = [vm for level in self.plan.levels for vm in level if vm in by_vm]
        failed = threading.Event()
        futures: dict[str, Future[VmOutcome]] = {}
        with ThreadPoolExecutor(max_workers=len(order)) as pool:
            for vm in order:
                deps = [futures[d] for d in self.plan.vms[vm].vm.depends_on if d in futures]
                futures[vm] = pool.submit(self._after, deps, by_vm[vm], failed)
        errors = [e for f in futures.values() if (e := f.exception()) is not None]
        if errors:
            # Report the failure itself, not the VMs skipped because of it.
            raise next((e for e in errors if not isinstance(e, _DependencyFailed)), errors[0])
        return {vm: f.result() for vm, f in futures.items()}

    def _after(
        self, deps: list[Future[VmOutcome]], action: Action, failed: threading.Event
    ) -> VmOutcome:
        for dep in deps:
            if dep.exception() is not None:
                raise _DependencyFailed(action.vm)
        if failed.is_set():
            raise _DependencyFailed(action.vm)
        try:
            return self._one(action)
        except BaseException:
            failed.set()  # VMs not yet started need not start: all will be undone
            raise

    def _one(self, action: Action) -> VmOutcome:
        plan = self.plan.vms.get(action.vm)
        outcome = VmOutcome(action.vm, action.kind)
        if action.kind == "unchanged" or plan is None:
            return outcome
        if action.kind == "update-live":
            self._update_live(plan)
            return outcome
        if action.kind == "restart":
            old = self.virt.xml(plan.domain, inactive=True)
            self.progress(plan.name, "stopping for restart")
            how = self.virt.stop(plan.domain, plan.vm.shutdown_grace)
            if how:
                outcome.notes.append(how)
            self.journal.record(f"restart {plan.domain}", lambda: self._restore(plan.domain, old))
        elif action.kind == "start":
            self.virt.stop(plan.domain)  # a domain left paused by an interrupted run
            self.journal.record(f"start {plan.domain}", lambda: self.virt.stop(plan.domain))
        choice = self._boot_choice(plan, action.kind, outcome)
        if action.kind in ("create", "restart"):
            self._storage(plan)
            self._define(plan, created=action.kind == "create")
        self._channels(plan)
        if choice.path == "warm":
            undo: list[Callable[[], None]] = []
            try:
                t_start, ready = self._warm_boot(plan, outcome, undo)
            except (KvmctlError, NotReady) as err:
                choice = self._fall_back(plan, str(err), outcome, undo)
            else:
                # Outside the fallback: a missed fatal deadline fails the run.
                self._judge(plan, outcome, t_start, ready)
                return outcome
        outcome.boot = "cold"
        self._boot(plan, outcome)
        if choice.save:
            self.progress(plan.name, "saving its warm-start state")
            outcome.notes.append(self.warm.save(plan))
        return outcome

    def _boot_choice(self, plan: VmPlan, kind: str, outcome: VmOutcome) -> BootChoice:
        """Warm or cold (kvmctl.planner.warm), a saved state that no longer
        fits discarded first; the VM's domain is stopped."""
        choice = self.warm.choose(plan, kind)
        if choice.reason and plan.vm.boot.mode == "warm":
            outcome.notes.append(f"cold boot: {choice.reason}")
        elif choice.discard:
            outcome.notes.append(f"warm-start state removed: {choice.reason}")
        if choice.discard:
            self._discard(plan, outcome)
        return choice

    def _discard(self, plan: VmPlan, outcome: VmOutcome) -> None:
        """Never fatal: a state left behind is not restored without its
        record, and the next start tries to remove it again."""
        try:
            self.warm.discard(plan)
        except (KvmctlError, OSError) as err:
            outcome.notes.append(f"warm-start state not removed: {err}")

    def _fall_back(
        self, plan: VmPlan, error: str, outcome: VmOutcome, undo: list[Callable[[], None]]
    ) -> BootChoice:
        """A warm start failed: the QEMU it left is stopped (its post-start
        step undone), its state discarded, the definition put back as
        planned; the VM boots cold."""
        choice = after_failure(error)
        self.progress(plan.name, f"{choice.reason}; booting cold")
        outcome.notes.append(f"{choice.reason}; fell back to a cold boot")
        outcome.fallback = error
        self.virt.stop(plan.domain)
        for step in undo:
            step()
        self._discard(plan, outcome)
        self.virt.define(build_domain(plan, self.rt_by_thread).to_xml())
        return choice

    def _channels(self, plan: VmPlan) -> None:
        """Region files private to QEMU's user and the socket directory, before
        QEMU starts (QEMU itself would make the files world-readable)."""
        if not self.on_this_host:
            return
        for region in host_channels.prepare(plan.channels):
            self.journal.record(f"create {region.path}", partial(host_channels.remove, region.name))

    def _storage(self, plan: VmPlan) -> None:
        if plan.seed is not None:
            self._seed(plan.seed)
        vol = plan.volume
        if self.virt.volume_exists(vol.pool, vol.name):
            return  # kept from before (or from an interrupted run): /data survives
        self.progress(plan.name, "creating data volume")
        self.virt.create_volume(vol.pool, build_volume(plan).to_xml())
        self.journal.record(
            f"create volume {vol.name}", lambda: self.virt.delete_volume(vol.pool, vol.name)
        )

    def _seed(self, seed: SeedPlan) -> None:
        """The cloud-init seed is derived from the spec: always written afresh."""
        data = seed_iso(seed)
        self.virt.delete_volume(seed.pool, seed.volume)
        xml = StorageVolume(name=seed.volume, capacity_bytes=len(data), format="raw").to_xml()
        self.virt.upload_volume(seed.pool, xml, data)
        self.journal.record(
            f"create volume {seed.volume}", lambda: self.virt.delete_volume(seed.pool, seed.volume)
        )

    def _define(self, plan: VmPlan, created: bool) -> None:
        self.virt.define(build_domain(plan, self.rt_by_thread).to_xml())
        if created:
            self.journal.record(f"define {plan.domain}", lambda: self.virt.undefine(plan.domain))

    def _boot(self, plan: VmPlan, outcome: VmOutcome) -> None:
        self.progress(plan.name, "starting")
        self.virt.start_paused(plan.domain)
        self._after_start(plan, outcome)
        with ReadyWatch(self.virt.conn, plan.domain, plan.vm.ready.probe) as watch:
            t_resume = time.monotonic()
            outcome.started_at = time.time()
            self.virt.resume(plan.domain)
            self.progress(plan.name, f"waiting for readiness ({plan.vm.ready.probe})")
            try:
                ready = watch.wait(plan.vm.ready.timeout)
            except NotReady as err:
                raise ApplyError(str(err)) from None
        self._judge(plan, outcome, t_resume, ready)

    def _warm_boot(
        self, plan: VmPlan, outcome: VmOutcome, undo: list[Callable[[], None]]
    ) -> tuple[float, float]:
        """Restore the saved state (paused), give the restored QEMU the live
        settings planned now, resume, set the guest's clock, then re-check
        readiness with the VM's probe. Returns when it began and when it was
        ready (time.monotonic()). Raises when any step fails; the QEMU it
        started is the caller's to stop."""
        self.progress(plan.name, "starting warm (restoring its saved state)")
        t_start = time.monotonic()
        outcome.started_at = time.time()
        self.warm.restore_paused(plan)
        # The revert brought back the definition the state was saved with:
        # the same restart settings (its key), live ones set as planned now.
        new = build_domain(plan, self.rt_by_thread)
        self.virt.define(new.to_xml())
        retune(self.virt, plan.domain, new, self.host_cpus)
        undo.append(self._after_start(plan, outcome))
        with ReadyWatch(self.virt.conn, plan.domain, plan.vm.ready.probe) as watch:
            self.virt.resume(plan.domain)
            remaining = plan.vm.ready.timeout - (time.monotonic() - t_start)
            offset = self.warm.set_clock(plan, max(remaining, 1.0))
            outcome.notes.append(f"warm start: guest clock set ({offset:+.2f} s off the host's)")
            self.progress(plan.name, f"re-checking readiness ({plan.vm.ready.probe})")
            remaining = plan.vm.ready.timeout - (time.monotonic() - t_start)
            ready = watch.restored().wait(max(remaining, 1.0))
        outcome.boot = "warm"
        return t_start, ready

    def _after_start(self, plan: VmPlan, outcome: VmOutcome) -> Callable[[], None]:
        """The post-start step on a QEMU that is still paused; returns its
        undo (also journaled)."""
        # Budgets can only shrink once no real-time thread is left in the
        # cgroups, so they are given back after the domain is stopped.
        rt_steps: list[rt.RtStep] = []

        def undo_start() -> None:
            self.virt.stop(plan.domain)
            rt.undo(rt_steps)
            self._prune_shaping()

        self.journal.record(f"start {plan.domain}", undo_start)
        outcome.notes += poststart.after_start(
            plan,
            rt_by_thread=self.rt_by_thread,
            netlink=self._netlink(),
            rt_steps=rt_steps,
            net_lock=self._net_lock,
        )
        return undo_start

    def _judge(self, plan: VmPlan, outcome: VmOutcome, t_resume: float, ready: float) -> None:
        """Readiness reached at `ready`: the figures, and the boot deadline."""
        outcome.ready_seconds = ready - t_resume
        assert outcome.started_at is not None
        outcome.ready_at = outcome.started_at + outcome.ready_seconds
        self.progress(plan.name, f"ready after {outcome.ready_seconds:.1f} s ({outcome.boot})")
        outcome.since_apply_s = ready - (self.since or t_resume)
        outcome.deadline_s = limit = plan.vm.ready.deadline
        outcome.deadline_met = deadline.met(limit, outcome.since_apply_s)
        if limit is not None and not outcome.deadline_met and plan.vm.ready.deadline_fatal:
            raise ApplyError(deadline.missed(plan.name, limit, outcome.since_apply_s))

    def _netlink(self) -> Callable[[], Netlink] | None:
        nl = self.netlink
        return None if nl is None else (lambda: nl)

    def _prune_shaping(self) -> None:
        if self.netlink is not None:
            with self._net_lock:
                self.netlink.prune_shaping()

    def _update_live(self, plan: VmPlan) -> None:
        old_xml = self.virt.xml(plan.domain, inactive=True)
        old = Domain.from_xml(old_xml)
        self.progress(plan.name, "updating live")

        def undo_update() -> None:
            self.virt.define(old_xml)
            retune(self.virt, plan.domain, old, self.host_cpus)

        self.journal.record(f"live update of {plan.domain}", undo_update)
        new = build_domain(plan, self.rt_by_thread)
        self.virt.define(new.to_xml())
        retune(self.virt, plan.domain, new, self.host_cpus)
        if self.on_this_host:
            steps: list[rt.RtStep] = []
            self.journal.record(f"real-time budgets of {plan.domain}", lambda: rt.undo(steps))
            self.notes += poststart.reschedule(plan, rt_by_thread=self.rt_by_thread, rt_steps=steps)
            # Idempotent; puts back shaping a new tap lacks (a VM that arrived by migration).
            self.notes += poststart.shape(plan, self._netlink(), self._net_lock)

    def _restore(self, name: str, old_xml: str) -> None:
        self.virt.stop(name)
        self.virt.define(old_xml)
        self.virt.start_paused(name)
        self.virt.resume(name)

    def _delete(self, action: Action) -> None:
        self.progress(action.vm, "deleting")
        destroy_domain(self.virt, action.domain)


def session_applier(
    session: Session,
    plan: Plan,
    netlink: Netlink | None,
    progress: Progress | None,
    since: float | None,
) -> Applier:
    """The Applier for one host's session: libvirt only where the host is
    remote (its QEMU threads and links are out of this process's reach)."""
    assert session.virt is not None
    return Applier(
        session.virt,
        plan,
        netlink=None if session.remote else netlink,
        rt_by_thread=session.facts.rt_group_sched,
        pool_path=session.options.pool_path,
        host_cpus=max(session.facts.cpu_ids, default=0) + 1,
        progress=progress,
        on_this_host=not session.remote,
        since=since,
    )


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
