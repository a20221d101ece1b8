"""One VM's start from its saved state, as the Applier runs it: warm or cold
(decided by kvmctl.planner.warm), a state that no longer fits discarded, the
restore with its live settings, clock and readiness re-check, the fallback
to a cold boot when any of that fails, and the save after a cold boot. The
saved state's own operations are kvmctl.cockpit.warm's."""

from __future__ import annotations

import time
from collections.abc import Callable

from kvmctl.adapters.ready import ReadyWatch
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit.outcome import Progress, VmOutcome
from kvmctl.cockpit.retune import retune
from kvmctl.cockpit.warm import WarmStarts
from kvmctl.errors import KvmctlError
from kvmctl.planner.domain import build_domain
from kvmctl.planner.plan import VmPlan
from kvmctl.planner.warm import BootChoice, after_failure

# The Applier's post-start step on a paused QEMU; returns its undo.
AfterStart = Callable[[VmPlan, VmOutcome], Callable[[], None]]


class WarmBoot:
    def __init__(
        self,
        virt: Virt,
        *,
        rt_by_thread: bool,
        host_cpus: int,
        progress: Progress,
        after_start: AfterStart,
    ):
        self.virt = virt
        self.warm = WarmStarts(virt)
        self.rt_by_thread = rt_by_thread
        self.host_cpus = host_cpus
        self.progress = progress
        self.after_start = after_start

    def choose(self, plan: VmPlan, kind: str, outcome: VmOutcome) -> BootChoice:
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

    def fall_back(
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

    def boot(
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
        undo.append(self.after_start(plan, outcome))
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

    def save(self, plan: VmPlan, outcome: VmOutcome) -> None:
        """Once a VM that booted cold is ready, when its boot choice says so."""
        self.progress(plan.name, "saving its warm-start state")
        outcome.notes.append(self.warm.save(plan))
