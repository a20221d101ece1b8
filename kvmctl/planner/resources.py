"""Memory, hugepage, memlock and real-time accounting against HostFacts (pure).

Only VMs that are about to be (re)created count against what is free: pages
held by an unchanged running domain of the set are already missing from the
host's free count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvmctl.host.facts import HostFacts
from kvmctl.spec.models import VM
from kvmctl.spec.units import format_size

RT_PERIOD_US = 1_000_000
# Memory the host keeps for itself, QEMU's own overhead per guest included.
HOST_RESERVE_KIB = 512 * 1024
QEMU_OVERHEAD_KIB = 64 * 1024


@dataclass(frozen=True)
class RealtimeBudget:
    policy: Literal["fifo", "rr"]
    priority: int
    period_us: int
    domain_runtime_us: int  # the domain's cgroup
    vcpu_runtime_us: int  # each vCPU's cgroup (children sum <= parent)


def check_memory(vms: dict[str, VM], facts: HostFacts) -> list[str]:
    """Problems with hugepages, hugetlbfs and plain memory for the VMs to start."""
    problems: list[str] = []
    by_size: dict[int, list[str]] = {}
    pages_needed: dict[int, int] = {}
    plain_kib = 0
    for name, vm in sorted(vms.items()):
        size_kib = vm.memory.size // 1024
        if vm.memory.hugepages:
            page_kib = vm.memory.hugepages // 1024
            by_size.setdefault(page_kib, []).append(name)
            pages_needed[page_kib] = pages_needed.get(page_kib, 0) + size_kib // page_kib
            plain_kib += QEMU_OVERHEAD_KIB
        else:
            plain_kib += size_kib + QEMU_OVERHEAD_KIB
    for page_kib, needed in sorted(pages_needed.items()):
        free = facts.hugepages_free(page_kib)
        if needed > free:
            label = format_size(page_kib * 1024)
            problems.append(
                f"{', '.join(by_size[page_kib])} need {needed} x {label} hugepages but only "
                f"{free} are free (reserve more: echo N > /proc/sys/vm/nr_hugepages, or "
                "kvm_host_hugepages_2m in the Ansible role)"
            )
    if pages_needed and not facts.hugetlbfs_mounts:
        problems.append(
            "hugepage-backed VMs need hugetlbfs mounted before libvirtd starts "
            "(mount -t hugetlbfs hugetlbfs /dev/hugepages, then restart libvirtd)"
        )
    available = facts.memory_available_kib - HOST_RESERVE_KIB
    if facts.memory_available_kib and plain_kib > available:
        problems.append(
            f"the VMs need {plain_kib // 1024} MiB of ordinary memory but the host has "
            f"{max(available, 0) // 1024} MiB available beyond its own reserve"
        )
    return problems


def check_memlock(vms: dict[str, VM], facts: HostFacts) -> list[str]:
    wanting = sorted(n for n, vm in vms.items() if vm.memory.locked or vm.memory.hard_limit)
    if not wanting or facts.can_lock_memory:
        return []
    limit = f"{facts.memlock_limit_kib // 1024} MiB" if facts.memlock_limit_kib else "unknown"
    return [
        f"{', '.join(wanting)} ask for locked memory or a memory hard limit, which are impossible "
        f"on this host: the memlock limit is {limit} and kvmctl lacks CAP_SYS_RESOURCE (drop "
        "memory.locked / memory.hard_limit, or run where memlock is unlimited)"
    ]


def realtime_budgets(
    vms: dict[str, VM], facts: HostFacts, budget_percent: float
) -> tuple[dict[str, RealtimeBudget], list[str]]:
    """Split the set's real-time budget over its FIFO/RR VMs.

    Under RT group scheduling a cgroup's threads may not run real-time at all
    unless the cgroup has an rt_runtime_us budget, and a parent must hold at
    least the sum of its children. libvirt creates every domain cgroup at 0, so
    apply gives `machine`, each domain and each of its vCPUs a share.
    """
    rt = {n: vm for n, vm in sorted(vms.items()) if vm.cpu.realtime is not None}
    if not rt:
        return {}, []
    total = int(RT_PERIOD_US * budget_percent / 100)
    problems: list[str] = []
    if facts.rt_runtime_us_root is not None and total > facts.rt_runtime_us_root:
        problems.append(
            f"the real-time budget {total} us exceeds the host's {facts.rt_runtime_us_root} us "
            "per second (lower host.rt_budget)"
        )
    per_vm = total // len(rt)
    budgets: dict[str, RealtimeBudget] = {}
    for name, vm in rt.items():
        assert vm.cpu.realtime is not None
        runtime = per_vm if facts.rt_group_sched else 0
        budgets[name] = RealtimeBudget(
            policy=vm.cpu.realtime.policy,
            priority=vm.cpu.realtime.priority,
            period_us=RT_PERIOD_US,
            domain_runtime_us=runtime,
            vcpu_runtime_us=runtime // vm.vcpus,
        )
    return budgets, problems
