"""Builders for planner unit tests: specs from text, host facts from a few numbers."""

from __future__ import annotations

import textwrap

from kvmctl.host.facts import CpuInfo, HostFacts, HugepagePool
from kvmctl.spec import Cockpit, parse_spec


def spec(text: str) -> Cockpit:
    return parse_spec(textwrap.dedent(text), "t.yaml")


def facts(
    cpus: int = 2,
    *,
    isolated: tuple[int, ...] = (),
    free_2m: int = 512,
    free_1g: int = 0,
    mem_gib: int = 24,
    memlock_kib: int | None = 8192,
    cap_sys_resource: bool = False,
    rt: bool = True,
    kvm: str = "present-but-unusable",
    bridges: tuple[str, ...] = (),
) -> HostFacts:
    pools = [HugepagePool(size_kib=2048, node=0, total=free_2m, free=free_2m)]
    if free_1g:
        pools.append(HugepagePool(size_kib=1048576, node=0, total=free_1g, free=free_1g))
    return HostFacts(
        hostname="test",
        kvm=kvm,  # type: ignore[arg-type]
        virt_type="kvm" if kvm == "usable" else "qemu",
        cpus=[CpuInfo(id=i, core=i) for i in range(cpus)],
        isolated_cpus=list(isolated),
        memory_total_kib=mem_gib * 1024 * 1024,
        memory_available_kib=mem_gib * 1024 * 1024 - 1024 * 1024,
        hugepages=pools,
        hugetlbfs_mounts=["/dev/hugepages"],
        memlock_limit_kib=memlock_kib,
        cap_sys_resource=cap_sys_resource,
        cgroup_version=1,
        cgroup_controllers=["cpu", "cpuset", "memory"],
        rt_group_sched=rt,
        rt_runtime_us_root=950000 if rt else None,
        bridges=list(bridges),
    )
