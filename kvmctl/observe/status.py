"""What each VM of a set really has, next to what the plan promised.

Everything "actual" is read where it takes effect: thread affinity and
scheduling from /proc, hugepages from the QEMU process status, shares and
quota from the cgroup files. A difference is drift and is listed by name.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvmctl.adapters.virt import Virt
from kvmctl.cockpit.warm import state_of as warm_state_of
from kvmctl.host import threads
from kvmctl.host.observe import read_int
from kvmctl.planner import deadline
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.state import history

STATE_NAMES = {
    0: "none",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shut off",
    6: "crashed",
    7: "suspended",
}


@dataclass
class VmStatus:
    vm: str
    domain: str
    state: str
    host: str | None = None  # the spec's host: of the VM, in a multi-host set
    ready: bool | None = None
    uptime_s: float | None = None
    pid: int | None = None
    vcpus_planned: list[str] = field(default_factory=list)
    vcpus_actual: list[str] = field(default_factory=list)
    emulator_planned: str = ""
    emulator_actual: str = ""
    vcpu_sched: list[str] = field(default_factory=list)
    hugepages_planned_kib: int = 0
    hugepages_actual_kib: int | None = None
    shares: int | None = None
    quota_us: int | None = None
    restarts: int | None = None  # by the supervisor, when one ran for the set
    # Since the last heartbeat, and whether its deadline passed (a supervisor
    # listens, and the spec gives the VM a heartbeat).
    heartbeat_age_s: float | None = None
    heartbeat_missed: bool | None = None
    snapshots: int = 0
    latest_snapshot: str | None = None
    last_snapshot_seconds: float | None = None  # how long the newest snapshot took
    last_migration_seconds: float | None = None
    ready_deadline_s: float | None = None  # the spec's ready.deadline
    # The newest boot to ready recorded (from the start of apply, or of a
    # supervisor's decision to restart), and whether it met the deadline.
    last_ready_s: float | None = None
    deadline_met: bool | None = None
    last_boot: str | None = None  # how that newest boot started: "cold" or "warm"
    boot_mode: str = "cold"  # the spec's boot.mode
    # The saved state a warm start would restore (kvmctl.cockpit.warm.state_of).
    warm_state: dict[str, object] | None = None
    drift: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def vm_status(virt: Virt, plan: VmPlan, states: dict[str, int]) -> VmStatus:
    st = _planned(plan, states)
    if st.state not in ("running", "paused"):
        return st
    pid = threads.qemu_pid(plan.domain)
    if pid is None:
        st.drift.append("QEMU process not found on this host")
        return st
    qemu = threads.inspect(pid)
    st.pid = pid
    st.uptime_s = round(time.time() - qemu.started, 1)
    st.vcpus_actual = [format_cpuset(t.affinity) for t in qemu.vcpus]
    st.vcpu_sched = [f"{t.policy}:{t.priority}" if t.priority else t.policy for t in qemu.vcpus]
    emulator = set().union(*(t.affinity for t in qemu.emulator)) if qemu.emulator else set()
    st.emulator_actual = format_cpuset(emulator)
    st.hugepages_actual_kib = qemu.hugetlb_kib
    if qemu.vcpus:
        vdir = threads.cgroup_dir(qemu.vcpus[0].tid, "cpu", pid)
        if vdir is not None:
            st.quota_us = read_int(vdir / "cpu.cfs_quota_us")
            st.shares = read_int(vdir.parent / "cpu.shares")
    st.ready = _ready(virt, plan)
    st.drift = drift(plan, st)
    return st


def _planned(plan: VmPlan, states: dict[str, int]) -> VmStatus:
    return VmStatus(
        vm=plan.name,
        domain=plan.domain,
        state=STATE_NAMES.get(states[plan.domain], "?") if plan.domain in states else "absent",
        vcpus_planned=[format_cpuset(c) for c in plan.placement.vcpu_pins],
        emulator_planned=format_cpuset(plan.placement.emulator),
        hugepages_planned_kib=plan.vm.memory.size // 1024 if plan.vm.memory.hugepages else 0,
        ready_deadline_s=plan.vm.ready.deadline,
        boot_mode=plan.vm.boot.mode,
        warm_state=warm_state_of(plan),
    )


def remote_vm_status(virt: Virt, plan: VmPlan, states: dict[str, int]) -> VmStatus:
    """A VM on a host kvmctl reaches only through libvirt: affinity, shares and
    quota as that libvirtd reads them there. Uptime, hugepages and thread
    scheduling live in that host's /proc and stay unknown (None) here."""
    st = _planned(plan, states)
    if st.state not in ("running", "paused"):
        return st
    tune = virt.in_force(plan.domain)
    st.vcpus_actual = [format_cpuset(c) for c in tune.vcpus]
    st.emulator_actual = format_cpuset(tune.emulator)
    st.shares, st.quota_us = tune.shares, tune.quota_us
    st.ready = _agent_answers(virt, plan)
    st.drift = drift(plan, st)
    return st


def drift(plan: VmPlan, st: VmStatus) -> list[str]:
    out = []
    if st.vcpus_actual != st.vcpus_planned:
        out.append(f"vCPU affinity {st.vcpus_actual} != planned {st.vcpus_planned}")
    if st.emulator_actual != st.emulator_planned:
        out.append(f"emulator threads on {st.emulator_actual} != planned {st.emulator_planned}")
    seen_hugepages = st.hugepages_actual_kib is not None
    if (
        seen_hugepages
        and st.hugepages_planned_kib
        and st.hugepages_actual_kib != st.hugepages_planned_kib
    ):
        out.append(
            f"hugepages {st.hugepages_actual_kib} KiB != planned {st.hugepages_planned_kib} KiB"
        )
    if plan.shares is not None and st.shares != plan.shares:
        out.append(f"cpu.shares {st.shares} != planned {plan.shares}")
    want_quota = plan.quota_us if plan.quota_us is not None else -1
    if st.quota_us is not None and st.quota_us != want_quota:
        out.append(f"cfs quota {st.quota_us} us != planned {want_quota} us")
    if plan.realtime is not None:
        want = f"{plan.realtime.policy}:{plan.realtime.priority}"
        if st.vcpu_sched and any(s != want for s in st.vcpu_sched):
            out.append(f"vCPU scheduling {st.vcpu_sched} != planned {want}")
    return out


def _ready(virt: Virt, plan: VmPlan) -> bool:
    marker = plan.vm.ready.serial_marker
    if marker is not None:
        try:
            return marker in Path(plan.serial_log).read_text(errors="replace")
        except OSError:
            return False
    return _agent_answers(virt, plan)


def _agent_answers(virt: Virt, plan: VmPlan) -> bool:
    try:
        virt.agent(plan.domain, "guest-ping", timeout=1)
    except Exception:  # noqa: BLE001 - not answering is the answer
        return False
    return True


def domain_states(virt: Virt) -> dict[str, str]:
    """Each domain's state by name ("running", "shut off", ...)."""
    return {d.name: STATE_NAMES.get(d.state, "?") for d in virt.domains()}


def cockpit_status(virt: Virt, plan: Plan, remote: bool = False) -> list[VmStatus]:
    states = {d.name: d.state for d in virt.domains()}
    one = remote_vm_status if remote else vm_status
    return [one(virt, p, states) for p in plan.vms.values()]


def add_history(
    rows: list[VmStatus],
    supervised: dict[str, dict[str, Any]],
    snapshots: dict[str, dict[str, Any]],
    durations: dict[str, Any] | None = None,
) -> None:
    """Fold in what the supervisor, the snapshots and the recorded durations
    and boots (kvmctl.state.history) say about each VM."""
    for row in rows:
        if row.vm in supervised:
            row.restarts = supervised[row.vm].get("restarts")
            beat = supervised[row.vm].get("heartbeat") or {}
            row.heartbeat_age_s = beat.get("age_s")
            row.heartbeat_missed = beat.get("missed")
        snap = snapshots.get(row.vm) or {}
        row.snapshots = int(snap.get("count") or 0)
        row.latest_snapshot = snap.get("latest")
        row.last_snapshot_seconds = history.last_seconds(durations or {}, row.vm, "snapshot")
        row.last_migration_seconds = history.last_seconds(durations or {}, row.vm, "migration")
        row.last_ready_s = history.last_seconds(durations or {}, row.vm, "ready")
        row.last_boot = history.last_boot(durations or {}, row.vm)
        row.deadline_met = deadline.met(row.ready_deadline_s, row.last_ready_s)
