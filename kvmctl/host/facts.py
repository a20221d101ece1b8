"""HostFacts: one read-only snapshot of what a host offers, as plain data.

The planner consumes this and nothing else about the host, so a plan can be
made for a host you are not on (`kvmctl plan --facts host.json`). Probing
lives in `kvmctl.host.probe`; this module only defines the data and its JSON
round trip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

KvmStatus = Literal["usable", "present-but-unusable", "absent"]
VirtType = Literal["kvm", "qemu"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HugepagePool(_Frozen):
    """Hugepages of one size on one NUMA node (node None = system-wide)."""

    size_kib: int
    node: int | None = None
    total: int
    free: int


class CpuInfo(_Frozen):
    id: int
    core: int = 0
    socket: int = 0
    node: int = 0
    online: bool = True


class LibvirtInfo(_Frozen):
    uri: str
    reachable: bool
    library_version: str | None = None
    daemon_version: str | None = None
    hypervisor_version: str | None = None
    error: str | None = None


class HostFacts(_Frozen):
    hostname: str = ""
    boot_id: str = ""
    libvirt: LibvirtInfo | None = None
    daemons: dict[str, bool] = Field(default_factory=dict)  # virtlogd/libvirtd -> running
    kvm: KvmStatus = "absent"
    kvm_reason: str = ""
    virt_type: VirtType = "qemu"  # what kvmctl will use: kvm when usable, else TCG ("qemu")
    cpus: list[CpuInfo] = Field(default_factory=list)
    isolated_cpus: list[int] = Field(default_factory=list)
    memory_total_kib: int = 0
    memory_available_kib: int = 0
    hugepages: list[HugepagePool] = Field(default_factory=list)
    hugetlbfs_mounts: list[str] = Field(default_factory=list)
    memlock_limit_kib: int | None = None  # None = unlimited
    cap_sys_resource: bool = False
    cgroup_version: Literal[1, 2] | None = None
    cgroup_controllers: list[str] = Field(default_factory=list)
    rt_group_sched: bool = False  # cpu.rt_runtime_us exists: FIFO vCPUs need a budget
    rt_runtime_us_root: int | None = None
    bridges: list[str] = Field(default_factory=list)
    vlan_supported: bool = False
    # vm.unprivileged_userfaultfd: QEMU before 8.1, running as an unprivileged
    # user, can receive a post-copy migration only when it is 1. None: unknown.
    userfaultfd_unprivileged: bool | None = None
    # /dev/shm, where libvirt backs shared regions (ivshmem): bytes free there,
    # and kvmctl's region files already present (file name -> size in bytes).
    # None: not known (a host reached only through its libvirtd).
    shm_free_bytes: int | None = None
    shm_files: dict[str, int] = Field(default_factory=dict)
    # /dev/vhost-vsock exists, so a vsock device can start. None: not known.
    vhost_vsock: bool | None = None
    # (uid, gid) libvirt runs QEMU as (its DAC label); shared regions' files
    # are made private to it. None: not known, or QEMU runs as its caller.
    qemu_owner: tuple[int, int] | None = None

    @property
    def cpu_ids(self) -> list[int]:
        return [c.id for c in self.cpus if c.online]

    @property
    def can_lock_memory(self) -> bool:
        """Locked memory / memtune hard_limit need an unlimited memlock or CAP_SYS_RESOURCE."""
        return self.cap_sys_resource or self.memlock_limit_kib is None

    def hugepages_free(self, size_kib: int) -> int:
        """Free pages of one size, summed over NUMA nodes (or the system-wide pool)."""
        per_node = [p for p in self.hugepages if p.size_kib == size_kib and p.node is not None]
        pools = per_node or [p for p in self.hugepages if p.size_kib == size_kib]
        return sum(p.free for p in pools)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> HostFacts:
        return cls.model_validate(json.loads(text))

    @classmethod
    def load(cls, path: Path) -> HostFacts:
        return cls.from_json(path.read_text())
