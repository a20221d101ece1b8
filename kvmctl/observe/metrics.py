"""Prometheus metric families of a cockpit, built from what `kvmctl status`
reports plus libvirt's CPU statistics and the audit's drift (pure).

`families()` takes one `Scrape` (gathered by kvmctl.observe.exporter on each request)
and returns the families; nothing here reads the host, so every rule is
unit-tested on hand-made rows. Every family carries the labels `set` and
`vm` (the name in the spec); docs/metrics.md lists them.

Values that are unknown are left out rather than reported as 0: a VM that
does not run has no readiness, no hugepage backing and no vCPU time, and a
set whose supervisor never ran has no restart count.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kvmctl.state.supervisor import safe_state_of

if TYPE_CHECKING:
    from kvmctl.observe.status import VmStatus

# Every state `kvmctl status` names, so a state series exists (as 0) before the
# VM first enters it and alerts on `== 1` have something to compare with.
STATES = (
    "running",
    "paused",
    "shut off",
    "shutdown",
    "crashed",
    "blocked",
    "suspended",
    "none",
    "absent",
)
NS_PER_S = 1e9


@dataclass(frozen=True)
class Scrape:
    """Everything one request reports about a set."""

    set_name: str
    rows: Sequence[VmStatus]
    # domain -> libvirt's bulk statistics ('vcpu.0.time', 'cpu.time', ...) of running domains
    stats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    drift: Mapping[str, int] = field(default_factory=dict)  # vm -> audit checks that drifted
    checks: Mapping[str, int] = field(default_factory=dict)  # vm -> audit checks made
    supervisor_alive: bool = False
    seconds: float = 0.0  # how long gathering took
    # The supervisor's state file as kvmctl.state.supervisor reads it.
    supervisor: Mapping[str, Any] = field(default_factory=dict)


def _gauge(name: str, doc: str, labels: Sequence[str] = ("set", "vm")) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, labels: Sequence[str] = ("set", "vm")) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def set_families(set_name: str, up: bool, seconds: float, supervisor_alive: bool) -> list[Metric]:
    """The set-wide families; `up` is False when the set could not be read."""
    fams = [
        _gauge("kvmctl_up", "1 when the set's status could be read on this scrape.", ["set"]),
        _gauge(
            "kvmctl_scrape_duration_seconds", "Time taken to gather the set's metrics.", ["set"]
        ),
        _gauge("kvmctl_supervisor_up", "1 while `kvmctl supervise` runs for the set.", ["set"]),
    ]
    fams[0].add_metric([set_name], 1.0 if up else 0.0)
    fams[1].add_metric([set_name], round(seconds, 6))
    fams[2].add_metric([set_name], 1.0 if supervisor_alive else 0.0)
    return list(fams)


def _flag(value: bool | None) -> float | None:
    return None if value is None else float(value)


def _kib(kib: int | None) -> float | None:
    return None if kib is None else kib * 1024.0


# Per-VM families: (name, kind, help, value of a status row; None leaves the VM out).
_PER_VM: tuple[tuple[str, str, str, Callable[[VmStatus], float | None]], ...] = (
    (
        "kvmctl_vm_ready",
        "gauge",
        "1 when the VM's readiness probe passes (running VMs).",
        lambda r: _flag(r.ready),
    ),
    (
        "kvmctl_vm_uptime_seconds",
        "gauge",
        "Seconds since the VM's QEMU process started.",
        lambda r: r.uptime_s,
    ),
    (
        "kvmctl_vm_supervisor_restarts",
        "counter",
        "Restarts of the VM made by `kvmctl supervise` (since that supervisor started).",
        lambda r: None if r.restarts is None else float(r.restarts),
    ),
    (
        "kvmctl_vm_hugepages_backed",
        "gauge",
        "1 when the VM's QEMU process holds hugepages (running VMs).",
        lambda r: None if r.hugepages_actual_kib is None else float(r.hugepages_actual_kib > 0),
    ),
    (
        "kvmctl_vm_hugepages_bytes",
        "gauge",
        "Hugepage memory held by the VM's QEMU process.",
        lambda r: _kib(r.hugepages_actual_kib),
    ),
    (
        "kvmctl_vm_hugepages_planned_bytes",
        "gauge",
        "Hugepage memory the plan gives the VM.",
        lambda r: _kib(r.hugepages_planned_kib),
    ),
    ("kvmctl_vm_snapshots", "gauge", "Snapshots the VM has.", lambda r: float(r.snapshots)),
    (
        "kvmctl_snapshot_duration_seconds",
        "gauge",
        "How long the VM's newest snapshot took.",
        lambda r: r.last_snapshot_seconds,
    ),
    (
        "kvmctl_migration_duration_seconds",
        "gauge",
        "How long the VM's newest migration took.",
        lambda r: r.last_migration_seconds,
    ),
    (
        "kvmctl_vm_last_ready_seconds",
        "gauge",
        "From the start of the VM's newest recorded boot (apply, or the supervisor's decision "
        "to restart) to ready.",
        lambda r: r.last_ready_s,
    ),
    (
        "kvmctl_vm_ready_deadline_seconds",
        "gauge",
        "The VM's boot deadline (ready.deadline in the spec).",
        lambda r: r.ready_deadline_s,
    ),
    (
        "kvmctl_vm_ready_deadline_met",
        "gauge",
        "1 when the VM's newest recorded boot was ready within its deadline, 0 when not.",
        lambda r: _flag(r.deadline_met),
    ),
)


def families(scrape: Scrape) -> list[Metric]:
    """Every family of a set that could be read."""
    s = scrape.set_name
    info = _gauge(
        "kvmctl_vm_info", "The libvirt domain of each VM (value 1).", ["set", "vm", "domain"]
    )
    state = _gauge(
        "kvmctl_vm_state", "1 for the VM's current state, 0 for the others.", ["set", "vm", "state"]
    )
    drift = _gauge(
        "kvmctl_vm_drift_items", "Audit checks of the VM that differ from the plan (kvmctl audit)."
    )
    checks = _gauge("kvmctl_vm_audit_checks", "Audit checks made for the VM.")
    per_vm = [
        (_counter(name, doc) if kind == "counter" else _gauge(name, doc), value)
        for name, kind, doc, value in _PER_VM
    ]
    for r in scrape.rows:
        info.add_metric([s, r.vm, r.domain], 1.0)
        for name in (*STATES, *(() if r.state in STATES else (r.state,))):
            state.add_metric([s, r.vm, name], 1.0 if name == r.state else 0.0)
        if r.vm in scrape.checks:
            checks.add_metric([s, r.vm], float(scrape.checks[r.vm]))
            drift.add_metric([s, r.vm], float(scrape.drift.get(r.vm, 0)))
        for fam, value in per_vm:
            v = value(r)
            if v is not None:
                fam.add_metric([s, r.vm], v)
    return [
        *set_families(s, True, scrape.seconds, scrape.supervisor_alive),
        info,
        state,
        drift,
        checks,
        *(fam for fam, _ in per_vm),
        *cpu_families(s, scrape.rows, scrape.stats),
        *safe_families(s, scrape.supervisor),
    ]


def safe_families(set_name: str, supervisor: Mapping[str, Any]) -> list[Metric]:
    """Heartbeats and the safe state, from a supervisor that runs (its state
    file says nothing current otherwise)."""
    degraded = _gauge(
        "kvmctl_degraded",
        "1 while the set's declared safe state is in force (kvmctl supervise).",
        ["set"],
    )
    age = _gauge("kvmctl_vm_heartbeat_age_seconds", "Seconds since the VM's last heartbeat.")
    missed = _gauge("kvmctl_vm_heartbeat_missed", "1 while the VM's heartbeat deadline has passed.")
    misses = _counter(
        "kvmctl_vm_heartbeat_misses",
        "Heartbeat deadlines the VM missed (since the supervisor started).",
    )
    safe = safe_state_of(dict(supervisor)) if supervisor else {}
    if safe.get("left_in_force"):
        degraded.add_metric([set_name], 1.0)  # shed VMs still held by a supervisor now gone
    if not supervisor.get("alive"):
        return [degraded, age, missed, misses]
    if isinstance(supervisor.get("safe_state"), Mapping):
        degraded.add_metric([set_name], 1.0 if safe.get("degraded") else 0.0)
    for vm, row in (supervisor.get("vms") or {}).items():
        beat = row.get("heartbeat") if isinstance(row, Mapping) else None
        if not isinstance(beat, Mapping):
            continue
        if beat.get("age_s") is not None:
            age.add_metric([set_name, vm], float(beat["age_s"]))
        missed.add_metric([set_name, vm], 1.0 if beat.get("missed") else 0.0)
        misses.add_metric([set_name, vm], float(beat.get("misses") or 0))
    return [degraded, age, missed, misses]


def cpu_families(
    set_name: str, rows: Sequence[VmStatus], stats: Mapping[str, Mapping[str, Any]]
) -> list[Metric]:
    """CPU time from libvirt's statistics: the whole VM (vCPUs plus QEMU's
    own threads), each vCPU, and each vCPU's wait for a pCPU."""
    total = _counter("kvmctl_vm_cpu_seconds", "CPU time of the VM's QEMU process.")
    vcpu = _counter(
        "kvmctl_vm_vcpu_seconds", "CPU time of each vCPU thread.", ["set", "vm", "vcpu"]
    )
    wait = _counter(
        "kvmctl_vm_vcpu_wait_seconds",
        "Time each vCPU was runnable but waited for a pCPU (run-queue delay).",
        ["set", "vm", "vcpu"],
    )
    for r in rows:
        st = stats.get(r.domain)
        if st is None:
            continue
        if "cpu.time" in st:
            total.add_metric([set_name, r.vm], int(st["cpu.time"]) / NS_PER_S)
        for i, time_ns, delay_ns in vcpu_times(st):
            vcpu.add_metric([set_name, r.vm, str(i)], time_ns / NS_PER_S)
            if delay_ns is not None:
                wait.add_metric([set_name, r.vm, str(i)], delay_ns / NS_PER_S)
    return [total, vcpu, wait]


def vcpu_times(st: Mapping[str, Any]) -> Iterator[tuple[int, int, int | None]]:
    """(index, time ns, delay ns or None) of each vCPU libvirt reports."""
    for i in range(int(st.get("vcpu.current", 0))):
        if f"vcpu.{i}.time" not in st:
            continue
        delay = st.get(f"vcpu.{i}.delay")
        yield i, int(st[f"vcpu.{i}.time"]), None if delay is None else int(delay)


def failed(set_name: str, seconds: float, supervisor_alive: bool = False) -> list[Metric]:
    """What a scrape reports when the set could not be read (libvirtd gone, ...)."""
    return set_families(set_name, False, seconds, supervisor_alive)
