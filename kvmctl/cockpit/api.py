"""The public Python API for a cockpit: preflight, apply, destroy.

The CLI is a thin layer over these functions; users' own tooling and CI can
call them the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit import readiness, record
from kvmctl.cockpit.applier import Applier, session_applier
from kvmctl.cockpit.outcome import ApplyResult, Progress
from kvmctl.cockpit.teardown import destroy_domain
from kvmctl.errors import ApplyError, HostError
from kvmctl.host import channels as host_channels
from kvmctl.host import images
from kvmctl.planner.channels import region_names
from kvmctl.planner.hosts import host_groups
from kvmctl.session import Session, open_session
from kvmctl.spec import VM, Cockpit, load_spec
from kvmctl.state import history
from kvmctl.state import warm as warm_records
from kvmctl.state.setlock import set_lock


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
        if vm.image.builtin in images.DISK_FLAVOURS:
            reasons += _disk_image_problems(name, vm)
        elif vm.image.builtin:
            try:
                images.artifacts(vm.image.builtin)
            except HostError as err:
                reasons.append(f"VM '{name}': {err}")
        elif vm.image.path and not session.remote and not Path(vm.image.path).is_file():
            reasons.append(f"VM '{name}': image {vm.image.path} does not exist")
    if reasons:
        where = f"host '{session.host}' ({session.uri})" if session.host else "this host"
        raise HostError(
            f"{where} cannot run cockpit '{session.spec.name}' as planned; nothing was changed",
            reasons,
        )


def _disk_image_problems(name: str, vm: VM) -> list[str]:
    assert vm.image.builtin is not None
    try:
        disk = images.disk_image(vm.image.builtin)
    except HostError as err:
        return [f"VM '{name}': {err}"]
    if vm.disk.size < disk.virtual_size:
        return [
            f"VM '{name}': disk.size {vm.disk.size // 1024**2} MiB is smaller than image "
            f"{vm.image.builtin} ({disk.virtual_size // 1024**2} MiB): give it at least that"
        ]
    return []


def open_sessions(spec: Cockpit, uri: str, host: str | None = None) -> list[Session]:
    """One session per host the spec's VMs run on, in the order they are
    applied (kvmctl.planner.hosts); VMs without host: are planned on `uri`.
    With `host`, only that host's VMs, planned on `uri`. The caller closes them."""
    sessions: list[Session] = []
    try:
        for group in host_groups(spec, uri, host):
            sessions.append(open_session(spec, group.uri, host=group.name))
    except BaseException:
        close_all(sessions)
        raise
    return sessions


def close_all(sessions: list[Session]) -> None:
    for session in sessions:
        session.close()


def apply(
    spec: Cockpit | str | Path,
    uri: str,
    progress: Progress | None = None,
    host: str | None = None,
) -> ApplyResult:
    """Preflight every host, then apply them one after the other. When a host
    fails, what this run did on the hosts before it is undone as well."""
    path = None if isinstance(spec, Cockpit) else Path(spec)
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    with set_lock(spec.name):
        sessions = open_sessions(spec, uri, host)
        with ExitStack() as stack:
            stack.callback(close_all, sessions)
            preflight_all(sessions)
            local = any(not s.remote for s in sessions)
            netlink = stack.enter_context(Netlink()) if local else None
            result = _apply_hosts(sessions, netlink, progress)
        readiness.remember(spec.name, result.outcomes.values(), "apply")
        if path is not None:
            record.remember(spec.name, path, sessions[0].plan.spec_hash)
        return result


def _apply_hosts(
    sessions: list[Session], netlink: Netlink | None, progress: Progress | None
) -> ApplyResult:
    done: list[Applier] = []
    results: list[ApplyResult] = []
    since = time.monotonic()  # boot deadlines count from here, on every host
    for session in sessions:
        applier = session_applier(session, session.plan, netlink, progress, since)
        try:
            results.append(applier.run(commit=False))
        except BaseException as err:
            failures = [f for earlier in reversed(done) for f in earlier.rollback()]
            if not done or isinstance(err, KeyboardInterrupt):
                raise
            hosts = ", ".join(_label(s) for s in sessions[: len(done)])
            extra = ("; " + "; ".join(failures)) if failures else ""
            raise ApplyError(
                f"{err}; what this run did on {hosts} was rolled back{extra}"
            ) from None
        done.append(applier)
    for applier in done:
        applier.journal.forget()
    return _merged(sessions, results)


def _merged(sessions: list[Session], results: list[ApplyResult]) -> ApplyResult:
    if len(results) == 1:
        return results[0]
    merged = ApplyResult(results[0].set_name, {}, [], [], sum(r.seconds for r in results))
    for session, result in zip(sessions, results, strict=True):
        merged.outcomes.update(result.outcomes)
        merged.bridges += result.bridges
        merged.notes += result.notes
        merged.hosts.update({vm: _label(session) for vm in result.outcomes})
    return merged


def _label(session: Session) -> str:
    return session.host or session.uri


def preflight_all(sessions: list[Session]) -> None:
    """Preflight of every host, reported together (exit 3), plus what only
    shows across hosts: a VM moved by a migration that the spec would start
    again where it came from."""
    if len(sessions) == 1:
        preflight(sessions[0])
        return
    reasons: list[str] = []
    for session in sessions:
        try:
            preflight(session)
        except HostError as err:
            reasons += [f"{_label(session)}: {r}" for r in err.reasons] or [str(err)]
    starting = {
        a.vm: _label(s)
        for s in sessions
        for a in s.plan.actions
        if a.kind in ("create", "restart", "start")
    }
    for session in sessions:
        reasons += [
            f"VM '{vm}' runs on {_label(session)} but the spec places it on {starting[vm]}: "
            f"applying would start a second copy; set its host: to where it runs, or migrate "
            "it back"
            for vm in session.plan.strays
            if vm in starting
        ]
    if reasons:
        names = ", ".join(_label(s) for s in sessions)
        raise HostError(
            f"the hosts of cockpit '{sessions[0].spec.name}' ({names}) cannot run it as planned; "
            "nothing was changed",
            reasons,
        )


@dataclass
class DestroyResult:
    domains: list[str]
    volumes: list[str]
    bridges: list[str]


def destroy(
    spec: Cockpit | str | Path,
    uri: str,
    progress: Callable[[str, str], None] | None = None,
    host: str | None = None,
) -> DestroyResult:
    """Stop and undefine the set's domains on each of its hosts, delete their
    volumes and the bridges kvmctl made for the set on this machine. Nothing
    it does not own is touched."""
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    say = progress or (lambda _vm, _what: None)
    result = DestroyResult([], [], [])
    with set_lock(spec.name):
        # Dependants first: the reverse of the order hosts are applied in.
        for group in reversed(host_groups(spec, uri, host)):
            virt = Virt(open_connection(group.uri))
            try:
                # With --host only that host's part goes: a VM the spec places
                # elsewhere (moved here by a migration) stays.
                keep = set(spec.vms) - set(group.vms) if host is not None else set()
                _destroy_domains(virt, spec, keep, say, result)
            finally:
                virt.close()
            if not group.remote:
                _destroy_bridges(spec.name, say, result)
                host_channels.remove_set(spec.name, keep=region_names(spec, keep))
    if host is None:
        history.forget(spec.name)  # the durations of snapshots that went with the domains
        record.forget(spec.name)
        warm_records.forget(spec.name)  # their saved states went with the disks
    return result


def _destroy_domains(
    virt: Virt,
    spec: Cockpit,
    keep: set[str],
    say: Callable[[str, str], None],
    result: DestroyResult,
) -> None:
    owned = [
        (d, d.meta.vm_name)
        for d in virt.domains()
        if d.meta and d.meta.set_name == spec.name and d.meta.vm_name not in keep
    ]
    for info, vm in sorted(owned, key=lambda pair: pair[0].name):
        say(vm, "destroying")
        # A VM no longer in the spec gets no grace: nothing says what it runs.
        grace = spec.vms[vm].shutdown_grace if vm in spec.vms else 0.0
        result.volumes += destroy_domain(virt, info.name, grace, partial(say, vm))
        result.domains.append(info.name)


def _destroy_bridges(set_name: str, say: Callable[[str, str], None], result: DestroyResult) -> None:
    with Netlink() as nl:
        nl.prune_shaping()  # ifb devices of the taps that went with the domains
        for bridge, alias in sorted(nl.bridges().items()):
            if alias and alias.startswith(f"kvmctl:{set_name}:") and bridge not in result.bridges:
                say("-", f"removing bridge {bridge}")
                nl.delete_bridge(bridge, alias)
                result.bridges.append(bridge)
