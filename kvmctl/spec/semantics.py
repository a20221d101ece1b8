"""Rules that relate fields of a structurally valid spec to each other.

Each problem is (field path, message) so the loader can add file:line. These
rules need no host: whether the host can satisfy the spec is preflight's job.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator

from kvmctl.spec.channel_rules import check_channels
from kvmctl.spec.models import Cockpit
from kvmctl.spec.problems import Path, Problem, host_key
from kvmctl.spec.safestate_rules import check_heartbeats, check_safe_state
from kvmctl.spec.types import NAME_RE


def check(spec: Cockpit) -> list[Problem]:
    problems: list[Problem] = []
    for rule in (
        _hosts,
        _networks,
        _attachments,
        _depends_on,
        _cpus,
        _images,
        check_heartbeats,
        check_safe_state,
        check_channels,
        _deadlines,
        _warm_boots,
    ):
        problems.extend(rule(spec))
    return problems


def check_names(data: object) -> list[Problem]:
    """Names of VMs, networks and hosts, checked on the raw mapping so that a bad
    name is reported even when other fields fail structural validation."""
    if not isinstance(data, dict):
        return []
    return list(_names(data))


def _names(data: dict[str, object]) -> Iterator[Problem]:
    for section in ("vms", "networks", "hosts"):
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        for key in entries:
            key = str(key)
            if not NAME_RE.match(key):
                yield (
                    (section, key),
                    f"'{key}' is not a valid name: use 1-32 lower-case letters, digits and "
                    "inner dashes, starting with a letter",
                )


def _hosts(spec: Cockpit) -> Iterator[Problem]:
    for name, vm in spec.vms.items():
        if vm.host is not None and vm.host not in spec.hosts:
            known = ", ".join(sorted(spec.hosts)) or "none are declared under hosts:"
            yield (("vms", name, "host"), f"unknown host '{vm.host}' (known: {known})")
    seen: dict[str, str] = {}
    for name, ref in spec.hosts.items():
        uri = ref.uri.rstrip("/")
        if uri in seen:
            yield (
                ("hosts", name, "uri"),
                f"{ref.uri} is already host '{seen[uri]}': one host, one name (two plans "
                "would hand out the same CPUs)",
            )
        seen.setdefault(uri, name)
    # Hosts are applied one after the other, each waiting for its VMs to be
    # ready, so depends_on across hosts must point one way only.
    graph: dict[str, set[str]] = {}
    for vm in spec.vms.values():
        for dep in vm.depends_on:
            if dep in spec.vms and spec.vms[dep].host != vm.host:
                graph.setdefault(host_key(vm.host), set()).add(host_key(spec.vms[dep].host))
    cycle = find_cycle({h: sorted(deps) for h, deps in graph.items()})
    if cycle:
        yield (
            ("vms",),
            "depends_on crosses hosts both ways: " + " -> ".join(cycle) + " (hosts start one "
            "after the other, so a VM may only depend on VMs of hosts that start before its own)",
        )



def _networks(spec: Cockpit) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    for name, net in spec.networks.items():
        if net.bridge in seen:
            yield (
                ("networks", name, "bridge"),
                f"bridge '{net.bridge}' is already used by network '{seen[net.bridge]}'",
            )
        seen.setdefault(net.bridge, name)
    nets = list(spec.networks.items())
    for i, (name, net) in enumerate(nets):
        for other, onet in nets[:i]:
            if net.subnet.overlaps(onet.subnet):
                yield (
                    ("networks", name, "subnet"),
                    f"{net.subnet} overlaps network '{other}' ({onet.subnet})",
                )


def _attachments(spec: Cockpit) -> Iterator[Problem]:
    taken: dict[tuple[str, str], str] = {}
    for vm_name, vm in spec.vms.items():
        attached: set[str] = set()
        for i, att in enumerate(vm.networks):
            path: Path = ("vms", vm_name, "networks", i)
            net = spec.networks.get(att.name)
            if net is None:
                known = ", ".join(sorted(spec.networks)) or "none are declared"
                yield (path + ("name",), f"unknown network '{att.name}' (known: {known})")
                continue
            if att.name in attached:
                yield (path + ("name",), f"attached to network '{att.name}' twice")
            attached.add(att.name)
            if att.address is None:
                continue
            if att.address not in net.subnet:
                yield (path + ("address",), f"{att.address} is outside {net.subnet}")
            elif att.address in (net.subnet.network_address, net.subnet.broadcast_address):
                yield (path + ("address",), f"{att.address} is not a host address of {net.subnet}")
            elif att.address == net.host_address:
                yield (path + ("address",), f"{att.address} is the host's address on '{att.name}'")
            key = (att.name, str(att.address))
            if key in taken:
                yield (path + ("address",), f"{att.address} is already used by VM '{taken[key]}'")
            taken.setdefault(key, vm_name)


def _depends_on(spec: Cockpit) -> Iterator[Problem]:
    for name, vm in spec.vms.items():
        for i, dep in enumerate(vm.depends_on):
            if dep == name:
                yield (("vms", name, "depends_on", i), "a VM cannot depend on itself")
            elif dep not in spec.vms:
                yield (("vms", name, "depends_on", i), f"unknown VM '{dep}'")
    cycle = find_cycle(
        {n: [d for d in vm.depends_on if d in spec.vms] for n, vm in spec.vms.items()}
    )
    if cycle:
        yield (("vms", cycle[0], "depends_on"), "dependency cycle: " + " -> ".join(cycle))


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as [a, b, ..., a], or None. Self-loops are reported elsewhere."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if nxt == node:
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def _cpus(spec: Cockpit) -> Iterator[Problem]:
    housekeeping = set(spec.host.housekeeping_cpus)
    safety_hk = set(spec.host.safety_housekeeping_cpus)
    for cpu in sorted(safety_hk & housekeeping):
        yield (
            ("host", "safety_housekeeping_cpus"),
            f"CPU {cpu} is in housekeeping_cpus too: the protected VMs' CPU must be their own",
        )
    housekeeping |= safety_hk
    owners: dict[int, str] = {}
    for name, vm in spec.vms.items():
        cpus = vm.cpu.cpus
        if cpus is None:
            continue
        path: Path = ("vms", name, "cpu", "cpus")
        if vm.cpu.placement == "dedicated":
            if len(cpus) != vm.vcpus:
                yield (
                    path,
                    f"a dedicated VM needs one CPU per vCPU: {vm.vcpus} vCPU(s), "
                    f"{len(cpus)} CPU(s)",
                )
            for cpu in cpus:
                if cpu in housekeeping:
                    yield (path, f"CPU {cpu} is a housekeeping CPU and cannot be dedicated")
                elif cpu in owners:
                    yield (path, f"CPU {cpu} is already dedicated to VM '{owners[cpu]}'")
                else:
                    owners[cpu] = name
    for name, vm in spec.vms.items():
        if vm.cpu.placement == "shared" and vm.cpu.cpus:
            for cpu in sorted(set(vm.cpu.cpus) & safety_hk):
                yield (
                    ("vms", name, "cpu", "cpus"),
                    f"CPU {cpu} is a safety housekeeping CPU and cannot be shared",
                )
            clash = sorted(set(vm.cpu.cpus) & set(owners))
            if clash:
                yield (
                    ("vms", name, "cpu", "cpus"),
                    f"CPU {clash[0]} is dedicated to VM '{owners[clash[0]]}' and cannot be shared",
                )


def _images(spec: Cockpit) -> Iterator[Problem]:
    allowed = [posixpath.normpath(d) for d in spec.host.image_dirs]
    for name, vm in spec.vms.items():
        if vm.ready.probe == "cloud-init" and not vm.image.cloud:
            yield (
                ("vms", name, "ready", "probe"),
                f"cloud-init readiness needs a cloud image (path, or builtin: debian-12); "
                f"builtin: {vm.image.builtin} has no cloud-init: use agent or serial:<marker>",
            )
        if vm.image.path is None:
            continue
        path = posixpath.normpath(vm.image.path)
        if not any(path.startswith(d.rstrip("/") + "/") for d in allowed):
            yield (
                ("vms", name, "image", "path"),
                f"'{vm.image.path}' is outside the allowed image directories "
                f"({', '.join(allowed)}); move it there or add its directory to host.image_dirs",
            )


def _deadlines(spec: Cockpit) -> Iterator[Problem]:
    for name, vm in spec.vms.items():
        ready = vm.ready
        if ready.deadline is not None and ready.deadline > ready.timeout:
            yield (
                ("vms", name, "ready", "deadline"),
                f"{ready.deadline:g} s is longer than the ready timeout ({ready.timeout:g} s): "
                "readiness would be given up before the deadline",
            )
        if ready.deadline_fatal and ready.deadline is None:
            yield (("vms", name, "ready", "deadline_fatal"), "needs a ready.deadline")


def _warm_boots(spec: Cockpit) -> Iterator[Problem]:
    """A warm start brings back a VM's memory and disk as saved: refused where
    the saved state cannot be taken or its restore cannot be told apart from a
    boot that never happened."""
    shm_members = {
        m.vm: ch.name for ch in spec.channels if ch.kind == "shm" for m in ch.members or ()
    }
    for name, vm in spec.vms.items():
        if vm.boot.mode != "warm":
            continue
        where = ("vms", name, "boot", "mode")
        if name in shm_members:
            yield (
                where,
                f"VM '{name}' is a member of shared region '{shm_members[name]}': QEMU cannot "
                "save its memory (the ivshmem device blocks it), so it cannot start warm",
            )
        if vm.ready.serial_marker is not None:
            yield (
                where,
                f"readiness probe '{vm.ready.probe}' watches the console for a boot message, "
                "which a restored guest never prints again: use the 'agent' or 'cloud-init' "
                "probe with a warm start",
            )
