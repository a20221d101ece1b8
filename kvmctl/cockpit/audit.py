"""`kvmctl audit`: what runs, compared item by item with the plan.

Two halves. `observe()` reads what is in force where it takes effect: the
QEMU threads' affinity and scheduling from /proc, hugepages from the QEMU
process status, shares and quota from the cgroup files, each NIC's bridge
from sysfs. `compare()` is pure: (plan, observation) -> one `Check` per
promise, so the rules are unit-tested on hand-made observations.

`repair_actions()` (pure) turns the plan's "unchanged" actions for running
VMs whose tunables drifted into "update-live" actions, so `kvmctl apply`
repairs pins, shares and caps changed behind its back (virsh vcpupin,
schedinfo) the same way it applies a live change of the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvmctl.host import threads
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.diff import Action
from kvmctl.planner.plan import Plan, VmPlan

# Checks `kvmctl apply` repairs live: pins, shares, cap.
_TUNABLE_SUFFIXES = (" affinity", " quota", "cpu.shares", " sched")


@dataclass(frozen=True)
class ThreadObs:
    affinity: frozenset[int]
    policy: str = "other"
    priority: int = 0


@dataclass(frozen=True)
class Observation:
    """One VM as the host sees it. `state` is libvirt's; the rest is empty
    when the VM does not run."""

    state: str
    pid: int | None = None
    vcpus: tuple[ThreadObs, ...] = ()
    vcpu_quota_us: tuple[int | None, ...] = ()  # per vCPU cgroup
    emulator: tuple[ThreadObs, ...] = ()
    iothreads: tuple[ThreadObs, ...] = ()
    hugetlb_kib: int = 0
    shares: int | None = None
    nic_bridges: dict[str, str | None] = field(default_factory=dict)  # tap -> bridge


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
        out.append(check(f"vcpu{i} quota", want_quota, "-" if quota is None else quota))
    out.append(
        check(
            "emulator affinity", format_cpuset(plan.placement.emulator), _affinities(obs.emulator)
        )
    )
    if obs.iothreads:
        out.append(
            check(
                "iothread affinity",
                format_cpuset(plan.placement.iothread),
                _affinities(obs.iothreads),
            )
        )
    else:
        out.append(check("iothread affinity", format_cpuset(plan.placement.iothread), "-"))
    hugepages = plan.vm.memory.size // 1024 if plan.vm.memory.hugepages else 0
    out.append(check("hugepages KiB", hugepages, obs.hugetlb_kib))
    if plan.shares is not None:
        out.append(check("cpu.shares", plan.shares, "-" if obs.shares is None else obs.shares))
    for nic in plan.nics:
        actual = obs.nic_bridges.get(nic.tap)
        out.append(check(f"nic {nic.network} ({nic.tap}) bridge", nic.bridge, actual or "-"))
    return out


def drift(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def repair_actions(actions: list[Action], drifted: dict[str, list[Check]]) -> list[Action]:
    """'unchanged' -> 'update-live' for VMs whose live tunables drifted."""
    out = []
    for a in actions:
        fixable = [c for c in drifted.get(a.vm, []) if c.tunable]
        if a.kind == "unchanged" and fixable:
            reasons = tuple(f"drift: {c.item} {c.actual} (planned {c.planned})" for c in fixable)
            a = Action("update-live", a.vm, a.domain, reasons)
        out.append(a)
    return out


# --- observing (reads /proc, cgroups and sysfs) ------------------------------------------


def observe(plan: VmPlan, state: str, sys_net: Path = Path("/sys/class/net")) -> Observation:
    if state not in ("running", "paused"):
        return Observation(state)
    pid = threads.qemu_pid(plan.domain)
    if pid is None:
        return Observation(state)
    try:
        qemu = threads.inspect(pid)
    except (OSError, ProcessLookupError):
        return Observation(state)

    def obs(t: threads.QemuThread) -> ThreadObs:
        return ThreadObs(t.affinity, t.policy, t.priority)

    quotas: list[int | None] = []
    shares = None
    for t in qemu.vcpus:
        vdir = threads.cgroup_dir(t.tid, "cpu", pid)
        quotas.append(_read_int(vdir / "cpu.cfs_quota_us") if vdir else None)
        if shares is None and vdir is not None:
            shares = _read_int(vdir.parent / "cpu.shares")
    return Observation(
        state=state,
        pid=pid,
        vcpus=tuple(obs(t) for t in qemu.vcpus),
        vcpu_quota_us=tuple(quotas),
        emulator=tuple(obs(t) for t in qemu.emulator),
        iothreads=tuple(obs(t) for t in qemu.threads if t.kind == "iothread"),
        hugetlb_kib=qemu.hugetlb_kib,
        shares=shares,
        nic_bridges={nic.tap: _master(sys_net, nic.tap) for nic in plan.nics},
    )


def _master(sys_net: Path, dev: str) -> str | None:
    try:
        return (sys_net / dev / "master").resolve(strict=True).name
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class AuditReport:
    set_name: str
    checks: list[Check]

    @property
    def drift(self) -> list[Check]:
        return drift(self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "set": self.set_name,
            "clean": not self.drift,
            "drift": [c.describe() for c in self.drift],
            "checks": [asdict(c) for c in self.checks],
        }


def audit_plan(
    plan: Plan, states: dict[str, str], look: Callable[..., Observation] = observe
) -> AuditReport:
    """`states`: domain name -> libvirt state name ("running", "shut off", ...)."""
    checks: list[Check] = []
    for p in plan.vms.values():
        checks += compare(p, look(p, states.get(p.domain, "absent")))
    return AuditReport(plan.set_name, checks)
