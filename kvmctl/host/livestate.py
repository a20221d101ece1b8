"""Read what runs now (domains with their kvmctl metadata, bridges, and what
is in force for the running domains of one set) into the planner's LiveState."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from kvmctl.adapters.virt import DomainInfo, Virt
from kvmctl.host.observe import observe
from kvmctl.planner.cpuset import parse_cpuset
from kvmctl.planner.live import LiveDomain, LiveState

RUNNING_STATES = {1}  # VIR_DOMAIN_RUNNING; a paused domain is half-started


def live_domain(info: DomainInfo) -> LiveDomain:
    meta = info.meta
    if meta is None:
        return LiveDomain(name=info.name, active=info.active)
    groups = dict(part.split("=", 1) for part in (meta.groups or "").split(";") if "=" in part)
    return LiveDomain(
        name=info.name,
        active=info.active and info.state in RUNNING_STATES,
        set_name=meta.set_name,
        vm=meta.vm_name,
        restart_hash=meta.restart_hash or "",
        live_hash=meta.live_hash or "",
        groups=groups,
        dedicated_cpus=parse_cpuset(meta.dedicated) if meta.dedicated else frozenset(),
        vsock_cid=meta.vsock_cid,
    )


def read_live(
    virt: Virt,
    bridges: Callable[[], dict[str, str | None]] | None = None,
    observe_set: str | None = None,
) -> LiveState:
    """With `observe_set`, that set's running domains are also read where
    their settings take effect (this host's /proc and cgroups): the planner
    turns drift from the plan into live repairs. Only for a local libvirt."""
    domains = [live_domain(d) for d in virt.domains()]
    if observe_set is not None:
        domains = [
            replace(d, observed=observe(d.name, "running"))
            if d.active and d.set_name == observe_set
            else d
            for d in domains
        ]
    return LiveState(
        domains=tuple(domains),
        bridges=bridges() if bridges is not None else {},
    )
