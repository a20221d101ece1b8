"""The public Python API for a cockpit: plan, apply, status, destroy.

The CLI is a thin layer over these functions; users' own tooling and CI can
call them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from kvmctl import history, images
from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.virt import Virt, open_connection
from kvmctl.apply import Applier, ApplyResult, Progress, destroy_domain
from kvmctl.audit import compare, drift, observe, repair_actions
from kvmctl.errors import HostError
from kvmctl.host.facts import HostFacts
from kvmctl.host.probe import probe_host
from kvmctl.livestate import read_live
from kvmctl.planner.live import LiveState
from kvmctl.planner.plan import Plan, PlanOptions, make_plan
from kvmctl.setlock import set_lock
from kvmctl.spec import Cockpit, load_spec


@dataclass
class Session:
    spec: Cockpit
    uri: str
    facts: HostFacts
    plan: Plan
    virt: Virt | None  # None when planning offline from a facts file
    options: PlanOptions


def plan_options(spec: Cockpit) -> PlanOptions:
    """Plan options from the built images' manifests, where they are built
    (preflight reports the missing ones)."""
    options = PlanOptions(image_root=str(images.image_dir()))
    kernels = dict(options.boot_kernels)
    flavours = sorted({vm.image.builtin for vm in spec.vms.values() if vm.image.builtin})
    for flavour in flavours:
        with suppress(HostError):
            img = images.artifacts(flavour)
            kernels[flavour] = img.kernel.name
            # All flavours share one base today.
            options = replace(options, cmdline_base=img.cmdline_base)
    return replace(options, boot_kernels=kernels)


def open_session(
    spec: Cockpit | str | Path,
    uri: str,
    *,
    facts_file: Path | None = None,
) -> Session:
    """Load the spec, read the host and what runs, and plan. With `facts_file`
    nothing on this host is touched: the plan is for the host those facts describe."""
    if not isinstance(spec, Cockpit):
        spec = load_spec(spec)
    options = plan_options(spec)
    if facts_file is not None:
        facts = HostFacts.load(facts_file)
        plan = make_plan(spec, facts, LiveState(), options)
        return Session(spec, uri, facts, plan, None, options)
    virt = Virt(open_connection(uri))
    facts = probe_host(uri)
    with Netlink() as nl:
        live = read_live(virt, nl.bridges)
    plan = make_plan(spec, facts, live, options)
    return Session(spec, uri, facts, plan, virt, options)


def replan(session: Session) -> Session:
    """The session planned again against the domains that run now, on its own
    connection, with the host facts read when it opened: what a long-running
    reader (the exporter) does instead of opening a session per look. Bridges
    are not re-read, so its bridge actions are not to be applied."""
    assert session.virt is not None
    live = read_live(session.virt)
    return replace(session, plan=make_plan(session.spec, session.facts, live, session.options))


def preflight(session: Session) -> None:
    """Everything the host must offer before anything is created (exit 3)."""
    reasons = list(session.plan.problems)
    facts = session.facts
    for daemon, up in sorted(facts.daemons.items()):
        if not up:
            reasons.append(f"{daemon} is not running (`make setup` starts it)")
    starting = {a.vm for a in session.plan.actions if a.kind in ("create", "restart", "start")}
    for name in sorted(starting):
        vm = session.spec.vms[name]
        if vm.image.builtin:
            try:
                images.artifacts(vm.image.builtin)
            except HostError as err:
                reasons.append(f"VM '{name}': {err}")
        elif vm.image.path and not Path(vm.image.path).is_file():
            reasons.append(f"VM '{name}': image {vm.image.path} does not exist")
    if reasons:
        raise HostError(
            f"this host cannot run cockpit '{session.spec.name}' as planned; nothing was changed",
            reasons,
        )


def apply(
    spec: Cockpit | str | Path,
    uri: str,
    progress: Progress | None = None,
) -> ApplyResult:
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    with set_lock(spec.name):
        return _apply_locked(spec, uri, progress)


def _apply_locked(spec: Cockpit, uri: str, progress: Progress | None) -> ApplyResult:
    session = open_session(spec, uri)
    preflight(session)
    assert session.virt is not None
    session.plan = _repair_drift(session.plan, session.virt)
    with Netlink() as nl:
        return Applier(
            session.virt,
            session.plan,
            netlink=nl,
            rt_by_thread=session.facts.rt_group_sched,
            pool_path=session.options.pool_path,
            host_cpus=max(session.facts.cpu_ids, default=0) + 1,
            progress=progress,
        ).run()


def _repair_drift(plan: Plan, virt: Virt) -> Plan:
    """Pins, shares and caps changed behind kvmctl's back (virsh vcpupin,
    schedinfo) leave its metadata as it was, so the diff calls such a VM
    unchanged: look at what is in force, and repair drift live, the same way
    as a live change of the spec."""
    running = {d.name for d in virt.domains() if d.active and d.state == 1}
    drifted = {
        a.vm: drift(compare(plan.vms[a.vm], observe(plan.vms[a.vm], "running")))
        for a in plan.actions
        if a.kind == "unchanged" and a.domain in running and a.vm in plan.vms
    }
    return replace(plan, actions=repair_actions(plan.actions, drifted))


@dataclass
class DestroyResult:
    domains: list[str]
    volumes: list[str]
    bridges: list[str]


def destroy(
    spec: Cockpit | str | Path, uri: str, progress: Callable[[str, str], None] | None = None
) -> DestroyResult:
    """Stop and undefine the set's domains, delete their volumes and the
    bridges kvmctl made for the set. Nothing it does not own is touched."""
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    with set_lock(spec.name):
        return _destroy_locked(spec, uri, progress)


def _destroy_locked(
    spec: Cockpit, uri: str, progress: Callable[[str, str], None] | None
) -> DestroyResult:
    session = open_session(spec, uri)
    assert session.virt is not None
    say = progress or (lambda _vm, _what: None)
    virt = session.virt
    result = DestroyResult([], [], [])
    owned = [d for d in virt.domains() if d.meta and d.meta.set_name == session.spec.name]
    for info in sorted(owned, key=lambda d: d.name):
        say(info.meta.vm_name if info.meta else info.name, "destroying")
        result.volumes += destroy_domain(virt, info.name)
        result.domains.append(info.name)
    with Netlink() as nl:
        nl.prune_shaping()  # ifb devices of the taps that went with the domains
        for bridge, alias in sorted(nl.bridges().items()):
            if alias and alias.startswith(f"kvmctl:{session.spec.name}:"):
                say("-", f"removing bridge {bridge}")
                nl.delete_bridge(bridge, alias)
                result.bridges.append(bridge)
    history.forget(session.spec.name)  # the durations of snapshots that went with the domains
    return result
