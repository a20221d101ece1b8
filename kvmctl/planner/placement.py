"""vCPU -> pCPU placement: dedicated CPUs exclusive, a shared pool for the rest,
emulator and I/O threads on the housekeeping CPUs.

Pure: takes the spec and HostFacts, returns placements and the problems that
make the plan impossible on that host (preflight, exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmctl.host.facts import HostFacts
from kvmctl.planner.protection import protected
from kvmctl.spec.models import Cockpit

CRITICALITY_ORDER = {"safety": 0, "high": 1, "normal": 2}


@dataclass(frozen=True)
class Placement:
    vcpu_pins: tuple[frozenset[int], ...]  # index = vCPU number
    emulator: frozenset[int]
    iothread: frozenset[int]
    dedicated: bool
    # CPUs held besides the vCPUs' own: a protected VM's safety housekeeping
    # CPUs, recorded with its dedicated CPUs so other sets never take them.
    claimed: frozenset[int] = frozenset()

    @property
    def cpus(self) -> frozenset[int]:
        return frozenset().union(*self.vcpu_pins)


@dataclass(frozen=True)
class PlacementResult:
    placements: dict[str, Placement]
    shared_pool: frozenset[int]
    housekeeping: frozenset[int]
    problems: list[str]
    notes: list[str]


def place(
    spec: Cockpit,
    facts: HostFacts,
    foreign_dedicated: dict[int, str] | None = None,
) -> PlacementResult:
    """Place every VM of `spec` that runs on this host.

    `foreign_dedicated` maps CPUs already dedicated to domains outside this set
    (another cockpit on the same host) to their owner: they are never reused.
    """
    foreign = dict(foreign_dedicated or {})
    online = frozenset(facts.cpu_ids)
    isolated = frozenset(facts.isolated_cpus) & online
    housekeeping = frozenset(spec.host.housekeeping_cpus)
    problems: list[str] = []
    notes: list[str] = []

    missing_hk = sorted(housekeeping - online)
    if missing_hk:
        problems.append(
            f"housekeeping CPU(s) {_cpus(missing_hk)} do not exist on this host "
            f"(online CPUs: {_cpus(sorted(online))})"
        )
    housekeeping &= online
    if not housekeeping:
        housekeeping = frozenset({min(online)}) if online else frozenset()
    safety_hk = frozenset(spec.host.safety_housekeeping_cpus)
    missing_safety = sorted(safety_hk - online)
    if missing_safety:
        problems.append(
            f"safety housekeeping CPU(s) {_cpus(missing_safety)} do not exist on this host "
            f"(online CPUs: {_cpus(sorted(online))})"
        )
    safety_hk &= online
    if safety_hk and not any(protected(vm) for vm in spec.vms.values()):
        notes.append(
            f"safety housekeeping CPU(s) {_cpus(sorted(safety_hk))} stay idle: no VM here "
            "has its emulator protected"
        )

    order = sorted(spec.vms, key=lambda n: (CRITICALITY_ORDER[spec.vms[n].criticality], n))
    owners: dict[int, str] = {}
    placements: dict[str, Placement] = {}

    for name in order:
        vm = spec.vms[name]
        if vm.cpu.placement != "dedicated":
            continue
        chosen = _dedicated_cpus(
            name,
            vm.vcpus,
            vm.cpu.cpus,
            online,
            isolated,
            housekeeping | safety_hk,
            owners,
            foreign,
            problems,
        )
        for cpu in chosen:
            owners[cpu] = name
        pins = tuple(frozenset({c}) for c in chosen) if len(chosen) == vm.vcpus else ()
        own = safety_hk if protected(vm) else frozenset()
        threads = own or housekeeping
        placements[name] = Placement(pins, threads, threads, dedicated=True, claimed=own)

    taken = frozenset(owners) | frozenset(foreign) | safety_hk
    pool = online - taken - housekeeping - isolated
    if not pool:
        pool = online - taken - isolated
        if pool:
            notes.append(
                f"no CPU is left for the shared pool besides the housekeeping CPU(s) "
                f"{_cpus(sorted(housekeeping))}: shared VMs run there"
            )
    shared_vms = [n for n in order if spec.vms[n].cpu.placement == "shared"]
    if shared_vms and not pool:
        problems.append(
            "no CPU is left for the shared VMs ("
            + ", ".join(shared_vms)
            + "): every CPU is dedicated"
        )

    for name in shared_vms:
        vm = spec.vms[name]
        cpus = pool
        if vm.cpu.cpus is not None:
            wanted = frozenset(vm.cpu.cpus)
            absent = sorted(wanted - online)
            clash = sorted(wanted & taken)
            if absent:
                problems.append(
                    f"VM '{name}' asks for CPU(s) {_cpus(absent)}, which this host lacks"
                )
            if clash:
                who = owners.get(clash[0]) or foreign.get(clash[0]) or "emulator protection"
                problems.append(
                    f"VM '{name}' asks for CPU {clash[0]}, which is dedicated to '{who}'"
                )
            cpus = wanted & online - taken
        placements[name] = Placement(
            tuple(cpus for _ in range(vm.vcpus)), housekeeping, housekeeping, dedicated=False
        )
    return PlacementResult(placements, pool, housekeeping, problems, notes)


def _dedicated_cpus(
    name: str,
    vcpus: int,
    explicit: list[int] | None,
    online: frozenset[int],
    isolated: frozenset[int],
    housekeeping: frozenset[int],
    owners: dict[int, str],
    foreign: dict[int, str],
    problems: list[str],
) -> list[int]:
    if explicit is not None:
        ok: list[int] = []
        for cpu in explicit:
            if cpu not in online:
                problems.append(
                    f"VM '{name}' wants CPU {cpu} dedicated, but this host has no CPU {cpu}"
                )
            elif cpu in foreign:
                problems.append(
                    f"VM '{name}' wants CPU {cpu} dedicated, but it is already dedicated to "
                    f"'{foreign[cpu]}'"
                )
            else:
                ok.append(cpu)
        return ok
    free = sorted(online - housekeeping - frozenset(owners) - frozenset(foreign))
    # Isolated CPUs (isolcpus) are what a dedicated vCPU wants: no host noise.
    free.sort(key=lambda c: (c not in isolated, c))
    if len(free) < vcpus:
        problems.append(
            f"VM '{name}' needs {vcpus} dedicated CPU(s) but only {len(free)} "
            f"{'is' if len(free) == 1 else 'are'} free (host CPUs {_cpus(sorted(online))}, "
            f"housekeeping {_cpus(sorted(housekeeping))}"
            + (
                f", dedicated to others {_cpus(sorted(set(owners) | set(foreign)))}"
                if owners or foreign
                else ""
            )
            + ")"
        )
        return []
    return free[:vcpus]


def _cpus(cpus: list[int]) -> str:
    return ",".join(str(c) for c in cpus) or "none"
