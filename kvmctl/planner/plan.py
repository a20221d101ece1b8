"""The whole plan: from (spec, host facts, live state) to what every VM gets and
what must change. Pure: no libvirt, no files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kvmctl.host.facts import HostFacts, VirtType
from kvmctl.planner import channels as chan
from kvmctl.planner import deadline, protection, resources
from kvmctl.planner.cloudinit import SeedPlan, seed_files
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.diff import Action, Fingerprint, diff
from kvmctl.planner.drift import repair_drift
from kvmctl.planner.fingerprint import with_fingerprint
from kvmctl.planner.live import LiveState
from kvmctl.planner.networks import (
    BridgeAction,
    BridgePlan,
    diff_bridges,
    plan_bridges,
    vlan_problems,
)
from kvmctl.planner.nics import NicPlan, plan_nics
from kvmctl.planner.order import level_of, start_levels
from kvmctl.planner.placement import Placement, place
from kvmctl.planner.resources import RealtimeBudget
from kvmctl.spec.loader import spec_hash
from kvmctl.spec.models import VM, Cockpit

CFS_PERIOD_US = 100_000


@dataclass(frozen=True)
class PlanOptions:
    """Where things live on the host; the defaults match `make setup`."""

    image_root: str = "/var/lib/kvmctl/images"
    # What each built-in image's manifest says: its own kernel arguments and
    # which kernel file to boot (the RT kernel boots uncompressed, via PVH).
    cmdline_base: str = "console=tty0 console=ttyS0,115200n8 panic=1 quiet"
    boot_kernels: dict[str, str] = field(
        default_factory=lambda: {"test-guest": "vmlinuz", "test-guest-rt": "vmlinux"}
    )
    # Built-in disk images: flavour -> the qcow2 a VM's overlay is backed by
    # (its manifest names the file).
    disk_images: dict[str, str] = field(
        default_factory=lambda: {"debian-12": "/var/lib/kvmctl/images/debian-12/disk.qcow2"}
    )
    pool: str = "kvmctl"
    pool_path: str = "/var/lib/kvmctl/volumes"
    log_dir: str = "/var/log/kvmctl"
    # Host ends of serial channels (kvmctl.state.paths.channel_dir()).
    channel_dir: str = "/run/kvmctl/channels"
    # VM -> its fastest cold boot to ready recorded (kvmctl.state.history):
    # a ready.deadline shorter than that is warned about.
    best_cold_ready: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumePlan:
    pool: str
    name: str
    capacity: int  # bytes
    backing: str | None = None  # a cloud image the overlay sits on


@dataclass(frozen=True)
class VmPlan:
    name: str
    domain: str
    vm: VM
    virt_type: VirtType
    placement: Placement
    level: int
    nics: tuple[NicPlan, ...]
    shares: int | None
    period_us: int | None
    quota_us: int | None
    realtime: RealtimeBudget | None
    volume: VolumePlan
    kernel: str | None
    initrd: str | None
    cmdline: str | None
    serial_log: str
    set_name: str
    spec_hash: str
    seed: SeedPlan | None = None  # cloud-init NoCloud seed, for cloud images
    channels: chan.ChannelPlan = field(default_factory=chan.ChannelPlan)  # this VM's
    fingerprint: Fingerprint = field(default_factory=Fingerprint)

    def summary(self) -> dict[str, object]:
        """The row `kvmctl plan` shows, as JSON-able data."""
        return {
            "vm": self.name,
            "domain": self.domain,
            "vcpus": {i: format_cpuset(c) for i, c in enumerate(self.placement.vcpu_pins)},
            "emulator": format_cpuset(self.placement.emulator),
            "placement": "dedicated" if self.placement.dedicated else "shared",
            "memory_mib": self.vm.memory.size // 1024**2,
            "hugepages_kib": (self.vm.memory.hugepages or 0) // 1024 or None,
            "shares": self.shares,
            "quota_us": self.quota_us,
            "period_us": self.period_us,
            "realtime": None
            if self.realtime is None
            else {
                "policy": self.realtime.policy,
                "priority": self.realtime.priority,
                "rt_runtime_us": self.realtime.domain_runtime_us,
                "rt_period_us": self.realtime.period_us,
            },
            "start_level": self.level,
            "boot": self.vm.boot.mode,
            "nics": [
                {"network": n.network, "bridge": n.bridge, "mac": n.mac, "address": str(n.address)}
                for n in self.nics
            ],
            "channels": self.channels.summary(),
        }


@dataclass(frozen=True)
class Plan:
    set_name: str
    spec_hash: str
    virt_type: VirtType
    vms: dict[str, VmPlan]
    levels: list[list[str]]
    actions: list[Action]
    bridges: list[BridgePlan]
    bridge_actions: list[BridgeAction]
    shared_pool: frozenset[int]
    housekeeping: frozenset[int]
    problems: list[str]  # the host cannot satisfy this plan: preflight fails, exit 3
    warnings: list[str]
    notes: list[str]
    # VMs of the spec placed on another host whose domain is here (moved by a
    # migration): left alone, neither deleted nor counted as this host's.
    strays: tuple[str, ...] = ()
    channels: chan.ChannelPlan = field(default_factory=chan.ChannelPlan)

    @property
    def changes(self) -> list[Action]:
        return [a for a in self.actions if a.kind != "unchanged"]


def domain_name(set_name: str, vm: str) -> str:
    return f"{set_name}-{vm}"


def make_plan(
    spec: Cockpit,
    facts: HostFacts,
    live: LiveState | None = None,
    options: PlanOptions | None = None,
    host: str | None = None,
    arriving: bool = False,
) -> Plan:
    """Plan the VMs of `spec` that run on `host` (None: those without a host:)."""
    live = live or LiveState()
    options = options or PlanOptions()
    vms = {n: vm for n, vm in spec.vms.items() if vm.host == host}
    local = spec.model_copy(update={"vms": vms}) if len(vms) != len(spec.vms) else spec
    # A VM arriving by migration joins its set's VMs already there, whose CPUs
    # stay theirs; a whole-set apply re-places all of them.
    # VMs of the set placed on other hosts keep the CPUs they hold here too.
    others = frozenset(spec.vms) - frozenset(vms)
    placed = place(
        local,
        facts,
        live.foreign_dedicated(spec.name, others, frozenset(vms) if arriving else None),
    )
    budgets, rt_problems = resources.realtime_budgets(vms, facts, spec.host.rt_budget)
    nics = plan_nics(local)
    levels = start_levels(vms)
    levels_by_vm = level_of(levels)
    whole_hash = spec_hash(spec)
    channels = chan.plan_channels(spec, frozenset(vms), options.channel_dir, facts, live)

    warnings: list[str] = []
    if facts.virt_type == "qemu":
        warnings.append(
            f"KVM is {facts.kvm} on this host: VMs run under TCG emulation, so timing is "
            "not representative"
        )
    if budgets and not facts.rt_group_sched:
        warnings.append("no RT group scheduling on this host: real-time vCPUs need no budget")
    warnings += deadline.cold_warnings(vms, options.best_cold_ready)

    vm_plans: dict[str, VmPlan] = {}
    for name, vm in vms.items():
        plan = _vm_plan(
            spec,
            name,
            vm,
            facts.virt_type,
            placed.placements.get(name),
            levels_by_vm[name],
            tuple(nics.get(name, [])),
            budgets.get(name),
            options,
            whole_hash,
            channels.of_vm(name),
        )
        if plan is not None:
            vm_plans[name] = plan

    actions = diff(
        spec.name,
        {n: (p.domain, p.fingerprint) for n, p in vm_plans.items()},
        live,
    )
    strays = tuple(a.vm for a in actions if a.kind == "delete" and a.vm in spec.vms)
    actions = repair_drift([a for a in actions if a.vm not in strays], vm_plans, live)
    to_start = {a.vm for a in actions if a.kind in ("create", "restart")}
    problems = list(placed.problems) + rt_problems
    problems += resources.check_memory({n: vms[n] for n in sorted(to_start)}, facts)
    problems += resources.check_memlock(vms, facts)
    problems += _foreign_domains(spec.name, vm_plans, live)
    problems += chan.problems(channels, facts)
    bridges = plan_bridges(spec, {a.name for vm in vms.values() for a in vm.networks})
    bridge_actions, bridge_problems = diff_bridges(spec.name, bridges, live.bridges)
    problems += bridge_problems + vlan_problems(local, facts.vlan_supported)
    return Plan(
        set_name=spec.name,
        spec_hash=whole_hash,
        virt_type=facts.virt_type,
        vms=vm_plans,
        levels=levels,
        actions=actions,
        bridges=bridges,
        bridge_actions=bridge_actions,
        shared_pool=placed.shared_pool,
        housekeeping=placed.housekeeping,
        problems=problems,
        warnings=warnings,
        notes=placed.notes
        + [protection.note(p) for p in vm_plans.values() if protection.protected(p.vm)]
        + [_stray_note(spec, vm) for vm in strays],
        strays=strays,
        channels=channels,
    )


def _stray_note(spec: Cockpit, vm: str) -> str:
    where = f"host '{spec.vms[vm].host}'" if spec.vms[vm].host else "the VMs without host:"
    return (
        f"VM '{vm}' runs here but the spec places it with {where}: left alone (moved by "
        "`kvmctl migrate`? set its host: to where it runs, or migrate it back)"
    )


def _vm_plan(
    spec: Cockpit,
    name: str,
    vm: VM,
    virt_type: VirtType,
    placement: Placement | None,
    level: int,
    nics: tuple[NicPlan, ...],
    budget: RealtimeBudget | None,
    options: PlanOptions,
    whole_hash: str,
    channels: chan.ChannelPlan,
) -> VmPlan | None:
    if placement is None or len(placement.vcpu_pins) != vm.vcpus:
        return None  # placement failed; the problem is already recorded
    domain = domain_name(spec.name, name)
    quota = int(CFS_PERIOD_US * vm.cpu.limit / 100) if vm.cpu.limit is not None else None
    kernel = initrd = cmdline = None
    backing = None
    seed = None
    if vm.image.cloud:
        backing = vm.image.path or options.disk_images[str(vm.image.builtin)]
        files = seed_files(name, vm.image.cloud_init, nics)
        seed = SeedPlan(options.pool, f"{domain}-seed.iso", files)
    else:
        root = f"{options.image_root}/{vm.image.builtin}"
        boot = options.boot_kernels.get(str(vm.image.builtin), "vmlinuz")
        kernel, initrd = f"{root}/{boot}", f"{root}/initrd.img"
        cmdline = guest_cmdline(options.cmdline_base, name, nics)
    plan = VmPlan(
        name=name,
        domain=domain,
        vm=vm,
        virt_type=virt_type,
        placement=placement,
        level=level,
        nics=nics,
        shares=protection.shares(vm),
        period_us=CFS_PERIOD_US if quota is not None else None,
        quota_us=quota,
        realtime=budget,
        volume=VolumePlan(options.pool, f"{domain}-data.qcow2", vm.disk.size, backing),
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        serial_log=f"{options.log_dir}/{domain}.serial.log",
        set_name=spec.name,
        spec_hash=whole_hash,
        seed=seed,
        channels=channels,
    )
    return with_fingerprint(plan)


def guest_cmdline(base: str, name: str, nics: tuple[NicPlan, ...]) -> str:
    """The test guest's kernel command line: its name and one `kvmctl.ip=` word
    per NIC, matched by MAC inside the guest (see guest-images/README.md)."""
    words = [base, f"kvmctl.name={name}"]
    words += [f"kvmctl.ip={n.mac},{n.address.with_prefixlen}" for n in nics]
    return " ".join(w for w in words if w)


def _foreign_domains(set_name: str, plans: dict[str, VmPlan], live: LiveState) -> list[str]:
    """A domain of the planned name that kvmctl does not own (or another set owns)
    is never touched: the plan cannot go ahead."""
    existing = live.by_name()
    problems = []
    for plan in plans.values():
        dom = existing.get(plan.domain)
        if dom is not None and (dom.set_name != set_name or dom.vm != plan.name):
            owner = f"cockpit '{dom.set_name}'" if dom.set_name else "nobody kvmctl knows"
            problems.append(
                f"a domain named '{plan.domain}' already exists and belongs to {owner}: "
                "kvmctl will not touch it (rename the set or the VM)"
            )
    return problems
