"""What `kvmctl plan` and `kvmctl xml` show, changing nothing: the set planned
on each of its hosts (or for given host facts), and the domain XML of one VM."""

from __future__ import annotations

from pathlib import Path

from kvmctl.cockpit.api import open_sessions
from kvmctl.errors import HostError, UsageError
from kvmctl.planner.domain import build_domain
from kvmctl.session import Session, open_session
from kvmctl.spec import load_spec


def plan_sessions(
    file: Path, uri: str, facts: Path | None = None, host: str | None = None
) -> list[Session]:
    """A session per host the spec places VMs on (only `host` when given);
    with `facts`, one session planned for the host those facts describe."""
    if facts is not None:
        return [open_session(file, uri, facts_file=facts, host=host)]
    return open_sessions(load_spec(file), uri, host)


def domain_xml(file: Path, vm: str, uri: str, facts: Path | None = None) -> str:
    """The libvirt domain XML kvmctl would define for `vm`, planned on its
    host: (read through that host's URI, unless `facts` describe the host)."""
    spec = load_spec(file)
    if vm not in spec.vms:
        raise UsageError(f"no VM '{vm}' in {file} (known: {', '.join(spec.vms)})")
    host = spec.vms[vm].host
    if host is not None and facts is None:
        uri = spec.hosts[host].uri
    session = open_session(spec, uri, facts_file=facts, host=host)
    vm_plan = session.plan.vms.get(vm)
    if vm_plan is None:
        raise HostError(f"VM '{vm}' cannot be placed", session.plan.problems)
    return build_domain(vm_plan, session.facts.rt_group_sched).to_xml()
