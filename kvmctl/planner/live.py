"""What runs now, as plain data: the planner's third input beside spec and facts.

The host layer fills this from libvirt (domains and their kvmctl metadata)
and, for the running domains of the set being planned, from /proc and the
cgroups (what is in force: `Observation`); tests and `kvmctl plan --facts`
build it by hand or leave it empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThreadObs:
    affinity: frozenset[int]
    policy: str = "other"
    priority: int = 0


@dataclass(frozen=True)
class Observation:
    """One VM's QEMU as the host sees it. `state` is libvirt's; the rest is
    empty when the VM does not run."""

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
class LiveDomain:
    name: str
    active: bool
    # kvmctl metadata; None for a domain kvmctl does not own.
    set_name: str | None = None
    vm: str | None = None
    restart_hash: str = ""
    live_hash: str = ""
    groups: dict[str, str] = field(default_factory=dict)  # settings group -> hash
    dedicated_cpus: frozenset[int] = frozenset()
    vsock_cid: int | None = None  # as recorded in the kvmctl metadata
    # What is in force on this host (None: not observed, e.g. a remote host).
    observed: Observation | None = None


@dataclass(frozen=True)
class LiveState:
    domains: tuple[LiveDomain, ...] = ()
    bridges: dict[str, str | None] = field(default_factory=dict)  # name -> ifalias

    def by_name(self) -> dict[str, LiveDomain]:
        return {d.name: d for d in self.domains}

    def of_set(self, set_name: str) -> dict[str, LiveDomain]:
        """The set's domains keyed by VM name."""
        return {d.vm: d for d in self.domains if d.set_name == set_name and d.vm}

    def vsock_cids(self, set_name: str) -> tuple[dict[str, int], dict[int, str]]:
        """The set's recorded CIDs by VM, and the CIDs other sets' domains on
        this host hold (running or not: a stopped one takes its CID back when
        it starts), each with the domain that holds it."""
        own: dict[str, int] = {}
        taken: dict[int, str] = {}
        for d in self.domains:
            if d.vsock_cid is None:
                continue
            if d.set_name == set_name and d.vm:
                own[d.vm] = d.vsock_cid
            else:
                taken[d.vsock_cid] = d.name
        return own, taken

    def foreign_dedicated(
        self,
        set_name: str,
        elsewhere: frozenset[str] | None = None,
        arriving: frozenset[str] | None = None,
    ) -> dict[int, str]:
        """CPUs dedicated to running domains this plan does not place: those of
        *other* sets, those of the set's VMs in `elsewhere` (placed on another
        host, yet running here), and with `arriving` given, every VM of the set
        outside it (a VM migrating to a host where others of its set run)."""
        out: dict[int, str] = {}
        for d in self.domains:
            if arriving is not None:
                own = d.set_name == set_name and d.vm in arriving
            else:
                own = d.set_name == set_name and d.vm not in (elsewhere or frozenset())
            if d.active and d.set_name is not None and not own:
                for cpu in d.dedicated_cpus:
                    out[cpu] = d.name
        return out
