"""`kvmctl top`: CPU, pCPU, memory and restarts of every VM and vCPU.

A `Sample` is taken from libvirt's bulk statistics (CPU and per-vCPU time,
run-queue delay, balloon) and from /proc (the pCPU each vCPU thread last ran
on, its affinity, the QEMU process's RSS and hugepages). `rows()` turns two
samples into rates and is pure; a `Sampler` holds the one libvirt
connection and yields those rows round after round. 100 % CPU is one host CPU
busy for the whole interval; `wait %` is the share of the interval a vCPU was
runnable but waited for a pCPU (schedstat delay): the price of sharing a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.stats import domain_stats
from kvmctl.adapters.virt import Virt
from kvmctl.host import threads
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.plan import domain_name
from kvmctl.spec import load_spec
from kvmctl.state.supervisor import supervisor_state


@dataclass(frozen=True)
class VcpuSample:
    index: int
    time_ns: int
    delay_ns: int | None
    last_cpu: int | None
    affinity: frozenset[int] = frozenset()


@dataclass(frozen=True)
class DomainSample:
    domain: str
    set_name: str | None
    vm: str | None
    at: float  # monotonic seconds
    state: str
    cpu_ns: int = 0
    vcpus: tuple[VcpuSample, ...] = ()
    pid: int | None = None
    rss_kib: int | None = None
    hugetlb_kib: int | None = None
    memory_kib: int | None = None  # guest RAM (balloon current)


@dataclass
class VcpuRow:
    index: int
    cpu_pct: float | None
    wait_pct: float | None
    pcpu: int | None
    affinity: str


@dataclass
class TopRow:
    domain: str
    set_name: str | None
    vm: str | None
    state: str
    cpu_pct: float | None
    memory_mib: int | None
    rss_mib: int | None
    hugepages_mib: int | None
    restarts: int | None
    pid: int | None
    vcpus: list[VcpuRow] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(delta_ns: int | None, seconds: float) -> float | None:
    if delta_ns is None or seconds <= 0 or delta_ns < 0:
        return None
    return round(delta_ns / 1e9 / seconds * 100, 1)


def _mib(kib: int | None) -> int | None:
    return None if kib is None else kib // 1024


def rows(
    before: Mapping[str, DomainSample],
    after: Mapping[str, DomainSample],
    restarts: Mapping[str, int] | None = None,
) -> list[TopRow]:
    """Rates between two samples, one row per domain of `after` (sorted by set
    and VM). A domain that restarted in between (new pid) or was not in
    `before` has no rates yet."""
    out = []
    for name in sorted(after, key=lambda n: (after[n].set_name or "", after[n].vm or n)):
        cur = after[name]
        prev = before.get(name)
        same = prev is not None and prev.pid == cur.pid and prev.state == cur.state
        seconds = cur.at - prev.at if prev is not None else 0.0
        prev_vcpus = {v.index: v for v in prev.vcpus} if same and prev else {}
        vcpus = []
        for v in cur.vcpus:
            p = prev_vcpus.get(v.index)
            vcpus.append(
                VcpuRow(
                    index=v.index,
                    cpu_pct=_pct(v.time_ns - p.time_ns, seconds) if p else None,
                    wait_pct=_pct(v.delay_ns - p.delay_ns, seconds)
                    if p and v.delay_ns is not None and p.delay_ns is not None
                    else None,
                    pcpu=v.last_cpu,
                    affinity=format_cpuset(v.affinity) if v.affinity else "",
                )
            )
        out.append(
            TopRow(
                domain=name,
                set_name=cur.set_name,
                vm=cur.vm,
                state=cur.state,
                cpu_pct=_pct(cur.cpu_ns - prev.cpu_ns, seconds) if same and prev else None,
                memory_mib=_mib(cur.memory_kib),
                rss_mib=_mib(cur.rss_kib),
                hugepages_mib=_mib(cur.hugetlb_kib),
                restarts=(restarts or {}).get(name),
                pid=cur.pid,
                vcpus=vcpus,
            )
        )
    return out


# --- sampling (libvirt statistics + /proc) --------------------------------------------


STATE_NAMES = {1: "running", 2: "blocked", 3: "paused", 4: "shutdown", 5: "shut off", 6: "crashed"}


def sample(
    stats: Mapping[str, Mapping[str, Any]],
    targets: Mapping[str, tuple[str | None, str | None]],
    now: float,
    inspect: Callable[[str], threads.QemuProcess | None] | None = None,
) -> dict[str, DomainSample]:
    """Samples for `targets` (domain -> (set, vm)) from libvirt's statistics
    of the running ones; `inspect(domain)` reads the QEMU process from /proc."""
    look = inspect or _inspect
    out: dict[str, DomainSample] = {}
    for domain, (set_name, vm) in targets.items():
        st = stats.get(domain)
        if st is None:
            out[domain] = DomainSample(domain, set_name, vm, now, "shut off")
            continue
        proc = look(domain)
        by_index = {t.index: t for t in proc.vcpus} if proc else {}
        vcpus = []
        for i in range(int(st.get("vcpu.current", 0))):
            t = by_index.get(i)
            vcpus.append(
                VcpuSample(
                    index=i,
                    time_ns=int(st.get(f"vcpu.{i}.time", 0)),
                    delay_ns=st.get(f"vcpu.{i}.delay"),
                    last_cpu=t.last_cpu if t else None,
                    affinity=t.affinity if t else frozenset(),
                )
            )
        out[domain] = DomainSample(
            domain=domain,
            set_name=set_name,
            vm=vm,
            at=now,
            state=STATE_NAMES.get(int(st.get("state.state", 0)), "?"),
            cpu_ns=int(st.get("cpu.time", 0)),
            vcpus=tuple(vcpus),
            pid=proc.pid if proc else None,
            rss_kib=proc.rss_kib if proc else st.get("balloon.rss"),
            hugetlb_kib=proc.hugetlb_kib if proc else None,
            memory_kib=st.get("balloon.current"),
        )
    return out


def _inspect(domain: str) -> threads.QemuProcess | None:
    pid = threads.qemu_pid(domain)
    if pid is None:
        return None
    try:
        return threads.inspect(pid)
    except (OSError, ProcessLookupError):
        return None
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: it ended while we looked
        return None


class Sampler:
    """The VMs of the spec in `file` (None: every kvmctl VM on the host), sampled
    over one libvirt connection to `uri`."""

    def __init__(self, file: Path | None, uri: str):
        self.conn = open_connection(uri)
        self.virt = Virt(self.conn)
        self.set_name: str | None = None  # the spec's set, when given one
        if file is not None:
            spec = load_spec(file)
            self.set_name = spec.name
            self.targets: dict[str, tuple[str | None, str | None]] = {
                domain_name(spec.name, vm): (spec.name, vm) for vm in spec.vms
            }
        else:
            self.targets = {
                d.name: (d.meta.set_name, d.meta.vm_name) for d in self.virt.domains() if d.meta
            }

    def take(self) -> dict[str, DomainSample]:
        stats = domain_stats(self.conn, list(self.targets))
        return sample(stats, self.targets, time.monotonic())

    def restarts(self) -> dict[str, int]:
        """Restarts and resets by `kvmctl supervise`, per domain."""
        out: dict[str, int] = {}
        for set_name in {s for s, _ in self.targets.values() if s}:
            state = supervisor_state(set_name)
            for vm, data in ((state or {}).get("vms") or {}).items():
                count = int(data.get("restarts", 0)) + int(data.get("resets", 0))
                out[domain_name(set_name, vm)] = count
        return out

    def rounds(self, interval: float) -> Iterator[list[TopRow]]:
        """Rows every `interval` seconds, the first after one interval."""
        before = self.take()
        while True:
            time.sleep(interval)
            after = self.take()
            yield rows(before, after, self.restarts())
            before = after

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            pass
