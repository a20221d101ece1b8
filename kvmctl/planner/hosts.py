"""Which VMs of a spec run on which host, and in which order the hosts are
applied ("many chips, many screens"). Pure: URIs are only looked at, never
opened."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from kvmctl.errors import UsageError
from kvmctl.spec import Cockpit


@dataclass(frozen=True)
class HostGroup:
    name: str | None  # None: the VMs without host:, on the connection given (-c)
    uri: str
    vms: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.name or "(this connection)"

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)


def is_remote(uri: str) -> bool:
    """A URI naming a host is another machine's libvirtd (or the test lab's):
    kvmctl reaches it only through libvirt, never through this machine's /proc,
    sysfs or netlink."""
    try:
        return urlsplit(uri).hostname is not None
    except ValueError:
        return False


def is_multi_host(spec: Cockpit) -> bool:
    return any(vm.host is not None for vm in spec.vms.values())


def host_groups(spec: Cockpit, uri: str, only: str | None = None) -> list[HostGroup]:
    """The hosts to plan, in the order they are applied: a host whose VMs
    others depend on comes first (spec validation rules out cycles). With
    `only`, just that host's VMs, planned on `uri`: kvmctl runs on (or is
    connected to) that host, as the Ansible `cockpit` role runs it."""
    if only is not None:
        check_host(spec, only)
        return [HostGroup(only, uri, _vms_on(spec, only))]
    unplaced = _vms_on(spec, None)
    same = [n for n, ref in spec.hosts.items() if ref.uri.rstrip("/") == uri.rstrip("/")]
    if unplaced and same:
        # Two plans for one libvirt would hand out its CPUs twice.
        raise UsageError(
            f"the VMs without host: ({', '.join(unplaced)}) would run on {uri}, which is host "
            f"'{same[0]}' of the spec: give them host: {same[0]}, or connect elsewhere with -c"
        )
    groups = [HostGroup(None, uri, unplaced)] if unplaced else []
    groups += [
        HostGroup(name, ref.uri, _vms_on(spec, name))
        for name, ref in spec.hosts.items()
        if _vms_on(spec, name)
    ]
    return _dependency_order(spec, groups)


def check_host(spec: Cockpit, host: str) -> None:
    """UsageError (exit 2) naming the known hosts when `host` is not one."""
    if host not in spec.hosts:
        known = ", ".join(sorted(spec.hosts)) or "the spec declares no hosts:"
        raise UsageError(f"no host '{host}' in the spec (known: {known})")


def _vms_on(spec: Cockpit, host: str | None) -> tuple[str, ...]:
    return tuple(n for n, vm in spec.vms.items() if vm.host == host)


def _dependency_order(spec: Cockpit, groups: list[HostGroup]) -> list[HostGroup]:
    """Stable topological order of the groups by cross-host depends_on."""
    needs = {
        g.name: {spec.vms[d].host for v in g.vms for d in spec.vms[v].depends_on} - {g.name}
        for g in groups
    }
    ordered: list[HostGroup] = []
    left = list(groups)
    while left:
        done = {g.name for g in ordered}
        ready = next((g for g in left if needs[g.name] <= done), left[0])
        ordered.append(ready)
        left.remove(ready)
    return ordered
