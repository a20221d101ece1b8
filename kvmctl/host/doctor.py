"""Can this host run a cockpit? Probe it, then judge every fact as ok, warn or fail.

    from kvmctl.host.doctor import diagnose
    report = diagnose("qemu:///system")
    report.ok, report.checks, report.facts   # HostFacts for the planner

`run_checks` is pure (HostFacts in, checks out), so the judgement is unit
tested on made-up hosts; `diagnose` adds the probing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kvmctl.host.facts import HostFacts
from kvmctl.host.kvmprobe import DEFAULT_TIMEOUT, KvmVerdict, source_of

Status = Literal["ok", "warn", "fail"]

TCG_WARNING = "timing under TCG is not representative of the real machine"
NO_LOCKING = "locked memory and memory hard limits are impossible on this host"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class DoctorReport:
    facts: HostFacts
    checks: list[Check]
    kvm: KvmVerdict | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "facts": self.facts.model_dump(mode="json"),
            "checks": [c.as_dict() for c in self.checks],
            "ok": self.ok,
        }
        if self.kvm is not None:
            out["kvm_probe"] = {
                "source": source_of(self.kvm),
                "kvm_seconds": self.kvm.kvm_seconds,
                "tcg_seconds": self.kvm.tcg_seconds,
                "tcg_ok": self.kvm.tcg_ok,
            }
        return out


def _size(kib: int) -> str:
    if kib >= 1024 * 1024 and kib % (1024 * 1024) == 0:
        return f"{kib // (1024 * 1024)} GiB"
    if kib >= 1024 and kib % 1024 == 0:
        return f"{kib // 1024} MiB"
    return f"{kib} KiB"


def _cpulist(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def _libvirt(facts: HostFacts) -> Check:
    info = facts.libvirt
    if info is None:
        return Check("libvirt", "fail", "not probed")
    if not info.reachable:
        return Check("libvirt", "fail", info.error or f"cannot reach libvirt at {info.uri}")
    return Check(
        "libvirt",
        "ok",
        f"{info.uri}: library {info.library_version}, daemon {info.daemon_version}, "
        f"hypervisor {info.hypervisor_version}",
    )


def _daemons(facts: HostFacts) -> Check:
    running = [n for n, up in facts.daemons.items() if up]
    stopped = [n for n, up in facts.daemons.items() if not up]
    if not stopped:
        return Check("daemons", "ok", ", ".join(f"{n} running" for n in running) or "none checked")
    reachable = facts.libvirt is not None and facts.libvirt.reachable
    problems = []
    status: Status = "ok"
    if "virtlogd" in stopped:
        status = "fail"
        problems.append("virtlogd is not running, so no domain can start (start it: `virtlogd -d`)")
    if "libvirtd" in stopped:
        if reachable:
            status = "fail" if status == "fail" else "warn"
            problems.append("no libvirtd process seen, though libvirt answers (modular daemons?)")
        else:
            status = "fail"
            problems.append("libvirtd is not running (start it: `libvirtd -d`, after virtlogd)")
    return Check("daemons", status, "; ".join(problems))


def _kvm(facts: HostFacts, verdict: KvmVerdict | None) -> Check:
    source = ""
    if verdict is not None and verdict.cached:
        source = " (probe result cached for this boot; --reprobe boots again)"
    if facts.kvm == "usable":
        return Check(
            "kvm",
            "ok",
            f"usable: {facts.kvm_reason}; kvmctl uses virt type 'kvm'{source}",
        )
    blocking = verdict is not None and verdict.blocking
    reachable = facts.libvirt is not None and facts.libvirt.reachable
    if blocking or not reachable:
        return Check("kvm", "fail", f"{facts.kvm}: {facts.kvm_reason}")
    return Check(
        "kvm",
        "warn",
        f"{facts.kvm}: {facts.kvm_reason}; kvmctl uses TCG (virt type 'qemu'): guests run, "
        f"but {TCG_WARNING}{source}",
    )


def _cpus(facts: HostFacts) -> list[Check]:
    online = facts.cpu_ids
    sockets = {c.socket for c in facts.cpus if c.online}
    cores = {(c.socket, c.core) for c in facts.cpus if c.online}
    nodes = {c.node for c in facts.cpus if c.online}
    offline = [c.id for c in facts.cpus if not c.online]
    detail = (
        f"{len(online)} online ({_cpulist(online)}): {len(sockets)} socket(s), "
        f"{len(cores)} core(s), {len(nodes)} NUMA node(s)"
    )
    if offline:
        detail += f"; offline: {_cpulist(offline)}"
    status: Status = "ok"
    if len(online) < 2:
        status = "warn"
        detail += "; one CPU leaves nothing to dedicate apart from host work"
    checks = [Check("cpus", status, detail)]
    if facts.isolated_cpus:
        checks.append(
            Check(
                "isolated cpus",
                "ok",
                f"{_cpulist(facts.isolated_cpus)} (kept free of host work by the kernel)",
            )
        )
    else:
        checks.append(
            Check(
                "isolated cpus",
                "ok",
                "none: dedicated vCPUs own their pCPUs among VMs, but host work may still run "
                "there (isolcpus= on the kernel command line keeps it off)",
            )
        )
    return checks


def _hugepages(facts: HostFacts) -> list[Check]:
    reserved = [p for p in facts.hugepages if p.total > 0]
    if reserved:
        parts = []
        for p in reserved:
            where = f" on node {p.node}" if p.node is not None else ""
            parts.append(f"{_size(p.size_kib)}: {p.free} free of {p.total}{where}")
        sizes = {p.size_kib for p in facts.hugepages}
        empty = sorted(s for s in sizes if s not in {p.size_kib for p in reserved})
        if empty:
            parts.append("none reserved of " + ", ".join(_size(s) for s in empty))
        pages = Check("hugepages", "ok", "; ".join(parts))
    else:
        pages = Check(
            "hugepages",
            "warn",
            "none reserved: VMs with memory.hugepages cannot start "
            "(reserve some: `echo 512 > /proc/sys/vm/nr_hugepages`)",
        )
    if facts.hugetlbfs_mounts:
        mount = Check("hugetlbfs", "ok", "mounted at " + ", ".join(facts.hugetlbfs_mounts))
    elif reserved:
        mount = Check(
            "hugetlbfs",
            "fail",
            "hugepages are reserved but no hugetlbfs is mounted, so libvirt cannot use them "
            "(`mount -t hugetlbfs hugetlbfs /dev/hugepages`, then restart libvirtd)",
        )
    else:
        mount = Check("hugetlbfs", "warn", "not mounted")
    return [pages, mount]


def _memlock(facts: HostFacts, source: str) -> Check:
    who = f" (read from {source})" if source else ""
    limit = "unlimited" if facts.memlock_limit_kib is None else _size(facts.memlock_limit_kib)
    cap = "has" if facts.cap_sys_resource else "lacks"
    if facts.can_lock_memory:
        return Check(
            "memlock",
            "ok",
            f"hard limit {limit}, {cap} CAP_SYS_RESOURCE{who}: locked memory and memory hard "
            "limits are possible",
        )
    return Check(
        "memlock",
        "warn",
        f"{NO_LOCKING}: the locked-memory hard limit is {limit} and CAP_SYS_RESOURCE is "
        f"missing{who}, so VMs asking for memory.locked or a memory hard limit cannot start",
    )


def _cgroups(facts: HostFacts) -> list[Check]:
    if facts.cgroup_version is None:
        return [Check("cgroups", "warn", "no cgroup hierarchy found: no shares, limits or pins")]
    wanted = {"cpu", "cpuset", "memory"}
    missing = sorted(wanted - set(facts.cgroup_controllers))
    detail = f"v{facts.cgroup_version}: " + (", ".join(facts.cgroup_controllers) or "none")
    status: Status = "ok"
    if missing:
        status = "warn"
        detail += f"; missing {', '.join(missing)}: shares, limits or pinning will not hold"
    checks = [Check("cgroups", status, detail)]
    if facts.rt_group_sched:
        budget = (
            f"the root holds {facts.rt_runtime_us_root} us per period"
            if facts.rt_runtime_us_root is not None
            else "the root budget is unreadable"
        )
        checks.append(
            Check(
                "realtime",
                "ok",
                f"RT group scheduling is on ({budget}): FIFO vCPUs need a budget, which kvmctl "
                "gives each real-time VM when it starts it",
            )
        )
    else:
        checks.append(
            Check("realtime", "ok", "no RT group scheduling: FIFO vCPUs need no cgroup budget")
        )
    return checks


def _network(facts: HostFacts) -> list[Check]:
    bridges = Check("bridges", "ok", ", ".join(facts.bridges) if facts.bridges else "none yet")
    if facts.vlan_supported:
        vlan = Check("vlan", "ok", "802.1Q available")
    else:
        vlan = Check(
            "vlan", "warn", "no 802.1Q in this kernel: networks with a vlan cannot be set up"
        )
    return [bridges, vlan]


def _postcopy(facts: HostFacts) -> Check:
    if facts.userfaultfd_unprivileged is None:
        return Check("postcopy", "ok", "not known (no /proc/sys/vm/unprivileged_userfaultfd)")
    if facts.userfaultfd_unprivileged:
        return Check(
            "postcopy", "ok", "QEMU may use userfaultfd: post-copy migrations can land here"
        )
    return Check(
        "postcopy",
        "warn",
        "vm.unprivileged_userfaultfd is 0: post-copy migrations to this host fail (QEMU < 8.1 "
        "runs unprivileged); the kvm_host role sets it with kvm_host_postcopy: true",
    )


def run_checks(
    facts: HostFacts, kvm: KvmVerdict | None = None, memlock_source: str = ""
) -> list[Check]:
    """Judge the facts: fail when a cockpit cannot run, warn when part of one cannot."""
    return [
        _libvirt(facts),
        _daemons(facts),
        _kvm(facts, kvm),
        *_cpus(facts),
        *_hugepages(facts),
        _memlock(facts, memlock_source),
        *_cgroups(facts),
        *_network(facts),
        _postcopy(facts),
    ]


def diagnose(
    uri: str | None,
    *,
    reprobe: bool = False,
    kvm_timeout: float = DEFAULT_TIMEOUT,
    root: Path = Path("/"),
) -> DoctorReport:
    """Probe this host (booting the KVM probe guest unless cached) and judge it."""
    from kvmctl.host.probe import probe

    result = probe(uri, root=root, reprobe=reprobe, kvm_timeout=kvm_timeout)
    checks = run_checks(result.facts, result.kvm, result.memlock_source)
    return DoctorReport(facts=result.facts, checks=checks, kvm=result.kvm)
