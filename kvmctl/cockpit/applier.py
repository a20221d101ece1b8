"""Run a plan through the adapters: bridges, storage, domains, readiness.

Idempotent (the plan's diff decides what to do), ordered by depends_on levels,
parallel inside a level, and journaled: when anything fails, everything this
run created or changed is undone and what existed before is left as it was.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial

from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit import poststart
from kvmctl.cockpit.bridges import apply_bridges
from kvmctl.cockpit.journal import Journal
from kvmctl.cockpit.outcome import ApplyResult, Progress, VmOutcome
from kvmctl.cockpit.retune import retune
from kvmctl.cockpit.start_order import run_in_order
from kvmctl.cockpit.storage import create_storage, ensure_pool
from kvmctl.cockpit.teardown import destroy_domain
from kvmctl.cockpit.warm_boot import WarmBoot
from kvmctl.errors import ApplyError, KvmctlError
from kvmctl.host import channels as host_channels
from kvmctl.host import rt
from kvmctl.planner import deadline
from kvmctl.planner.diff import Action
from kvmctl.planner.domain import build_domain
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.session import Session
from kvmctl.state import warm as warm_records
from kvmctl.xml.domain import Domain


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
        self.warm_boot = WarmBoot(
            virt,
            rt_by_thread=rt_by_thread,
            host_cpus=host_cpus,
            progress=self.progress,
            after_start=self._after_start,
        )
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
                ensure_pool(self.virt, self.journal, self.plan, self.pool_path)
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

    # --- VMs -----------------------------------------------------------------------

    def _vms(self, todo: list[Action]) -> dict[str, VmOutcome]:
        if not todo:
            return {}
        by_vm = {a.vm: a for a in todo}
        order = [vm for level in self.plan.levels for vm in level if vm in by_vm]
        return run_in_order(
            order, lambda vm: self.plan.vms[vm].vm.depends_on, lambda vm: self._one(by_vm[vm])
        )

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
        choice = self.warm_boot.choose(plan, action.kind, outcome)
        if action.kind in ("create", "restart"):
            create_storage(self.virt, self.journal, self.progress, plan)
            self._define(plan, created=action.kind == "create")
        self._channels(plan)
        if choice.path == "warm":
            undo: list[Callable[[], None]] = []
            try:
                t_start, ready = self.warm_boot.boot(plan, outcome, undo)
            except (KvmctlError, NotReady) as err:
                choice = self.warm_boot.fall_back(plan, str(err), outcome, undo)
            else:
                # Outside the fallback: a missed fatal deadline fails the run.
                self._judge(plan, outcome, t_start, ready)
                return outcome
        outcome.boot = "cold"
        self._boot(plan, outcome)
        if choice.save:
            self.warm_boot.save(plan, outcome)
        return outcome

    def _channels(self, plan: VmPlan) -> None:
        """Region files private to QEMU's user and the socket directory, before
        QEMU starts (QEMU itself would make the files world-readable)."""
        if not self.on_this_host:
            return
        for region in host_channels.prepare(plan.channels):
            self.journal.record(f"create {region.path}", partial(host_channels.remove, region.name))

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
            was: dict[int, tuple[str, int]] = {}
            self.journal.record(f"vCPU scheduling of {plan.domain}", lambda: rt.undo(steps, was))
            self.notes += poststart.reschedule(
                plan, rt_by_thread=self.rt_by_thread, rt_steps=steps, was=was
            )
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
        # Its saved state went with its disk; the record goes too.
        warm_records.remove(self.plan.set_name, action.vm)


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
