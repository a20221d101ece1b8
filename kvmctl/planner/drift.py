"""Planned vs in force, item by item (pure), and drift as planner output.

`compare()` turns (VM plan, observation) into one `Check` per promise: the
rules `kvmctl audit` reports. `repair_drift()` is the planner's use of them:
pins, scheduling, shares and caps changed behind kvmctl's back (virsh
vcpupin, schedinfo, chrt) leave its metadata as it was, so the fingerprint
diff calls such a VM unchanged; the observation in LiveState says otherwise,
and the action becomes an "update-live" whose reasons name the drift. Apply
then repairs it the same way as a live change of the spec, in one plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.diff import Action
from kvmctl.planner.live import LiveState, Observation, ThreadObs

if TYPE_CHECKING:
    from kvmctl.planner.plan import VmPlan

# Checks an "update-live" repairs: pins, scheduling, shares, cap.
_TUNABLE_SUFFIXES = (" affinity", " quota", "cpu.shares", " sched")


@dataclass(frozen=True)
class Check:
    vm: str
    item: str
    planned: str
    actual: str
    ok: bool

    @property
    def tunable(self) -> bool:
        """Repaired live by `kvmctl apply`."""
        return self.item.endswith(_TUNABLE_SUFFIXES)

    def describe(self) -> str:
        return f"{self.vm}: {self.item} is {self.actual}, planned {self.planned}"


def _sched(t: ThreadObs) -> str:
    return f"{t.policy}:{t.priority}" if t.priority else t.policy


def _affinities(ts: tuple[ThreadObs, ...]) -> str:
    return " ".join(sorted({format_cpuset(t.affinity) for t in ts})) or "-"


def compare(plan: VmPlan, obs: Observation) -> list[Check]:
    """Every promise of the plan for one VM, as planned vs actual."""
    vm = plan.name

    def check(item: str, planned: object, actual: object) -> Check:
        return Check(vm, item, str(planned), str(actual), str(planned) == str(actual))

    out = [check("state", "running", obs.state)]
    if obs.state not in ("running", "paused"):
        return out
    if obs.pid is None:
        out.append(check("QEMU process", "present", "not found on this host"))
        return out
    pins = plan.placement.vcpu_pins
    want_sched = f"{plan.realtime.policy}:{plan.realtime.priority}" if plan.realtime else "other"
    want_quota = plan.quota_us if plan.quota_us is not None else -1
    out.append(check("vcpu threads", len(pins), len(obs.vcpus)))
    for i, cpus in enumerate(pins):
        t = obs.vcpus[i] if i < len(obs.vcpus) else None
        out.append(
            check(f"vcpu{i} affinity", format_cpuset(cpus), format_cpuset(t.affinity) if t else "-")
        )
        out.append(check(f"vcpu{i} sched", want_sched, _sched(t) if t else "-"))
        quota = obs.vcpu_quota_us[i] if i < len(obs.vcpu_quota_us) else None
        # None: not readable here (kvmctl.host.observe reads cgroup v1 files):
        # unknown is no check, not drift, or every plan would repair it forever.
        if quota is not None:
            out.append(check(f"vcpu{i} quota", want_quota, quota))
    out.append(
        check(
            "emulator affinity", format_cpuset(plan.placement.emulator), _affinities(obs.emulator)
        )
    )
    out.append(
        check(
            "iothread affinity", format_cpuset(plan.placement.iothread), _affinities(obs.iothreads)
        )
    )
    hugepages = plan.vm.memory.size // 1024 if plan.vm.memory.hugepages else 0
    out.append(check("hugepages KiB", hugepages, obs.hugetlb_kib))
    if plan.shares is not None and obs.shares is not None:
        out.append(check("cpu.shares", plan.shares, obs.shares))
    for nic in plan.nics:
        actual = obs.nic_bridges.get(nic.tap)
        out.append(check(f"nic {nic.network} ({nic.tap}) bridge", nic.bridge, actual or "-"))
    return out


def drift(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def repair_drift(
    actions: list[Action], vm_plans: dict[str, VmPlan], live: LiveState
) -> list[Action]:
    """'unchanged' -> 'update-live' for running VMs whose observed tunables
    drifted from the plan. VMs without an observation are left as they are."""
    domains = live.by_name()
    out = []
    for a in actions:
        dom = domains.get(a.domain)
        if a.kind == "unchanged" and a.vm in vm_plans and dom is not None and dom.observed:
            fixable = [c for c in drift(compare(vm_plans[a.vm], dom.observed)) if c.tunable]
            if fixable:
                reasons = tuple(
                    f"drift: {c.item} {c.actual} (planned {c.planned})" for c in fixable
                )
                a = Action("update-live", a.vm, a.domain, reasons)
        out.append(a)
    return out
