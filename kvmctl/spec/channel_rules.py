"""Rules relating a spec's channels to its VMs: names unique, the fields of
each kind, members known, distinct and on one host, one vsock device a VM."""

from __future__ import annotations

from collections.abc import Iterator

from kvmctl.spec.channels import Channel
from kvmctl.spec.models import Cockpit
from kvmctl.spec.problems import Path, Problem, host_key, unknown_vm


def check_channels(spec: Cockpit) -> Iterator[Problem]:
    names: dict[str, int] = {}
    vsock_of: dict[str, str] = {}
    for i, ch in enumerate(spec.channels):
        path: Path = ("channels", i)
        if ch.name in names:
            yield (
                path + ("name",),
                f"channel '{ch.name}' is already declared (channels[{names[ch.name]}])",
            )
        names.setdefault(ch.name, i)
        yield from _kind_fields(ch, path)
        if ch.kind == "shm":
            yield from _members(spec, ch, path)
        elif ch.vm is not None:
            if ch.vm not in spec.vms:
                yield (path + ("vm",), unknown_vm(spec, ch.vm))
            elif ch.kind == "vsock":
                if ch.vm in vsock_of:
                    yield (
                        path + ("vm",),
                        f"VM '{ch.vm}' already has vsock channel '{vsock_of[ch.vm]}' "
                        "(a VM has one vsock device)",
                    )
                vsock_of.setdefault(ch.vm, ch.name)


def _kind_fields(ch: Channel, path: Path) -> Iterator[Problem]:
    """Which fields go with which kind: shm has size and members, the others vm."""
    if ch.kind == "shm":
        if ch.size is None:
            yield (path + ("size",), "a shm channel needs size (a power of two, like '4MiB')")
        if ch.vm is not None:
            yield (path + ("vm",), "a shm channel lists its VMs under members, not vm")
        return
    if ch.vm is None:
        yield (path + ("vm",), f"a {ch.kind} channel needs vm (the VM at its guest end)")
    for field in ("size", "members"):
        if getattr(ch, field) is not None:
            yield (path + (field,), f"a {ch.kind} channel takes no {field} (only shm does)")


def _members(spec: Cockpit, ch: Channel, path: Path) -> Iterator[Problem]:
    members = ch.members or []
    if len(members) < 2:
        yield (
            path + ("members",),
            f"a shared region needs at least two members ({len(members)} listed): "
            "one VM alone shares with nobody",
        )
    seen: dict[str, int] = {}
    for j, member in enumerate(members):
        where = path + ("members", j, "vm")
        if member.vm not in spec.vms:
            yield (where, unknown_vm(spec, member.vm))
            continue
        if member.vm in seen:
            yield (where, f"VM '{member.vm}' is already a member (members[{seen[member.vm]}])")
            continue
        seen[member.vm] = j
        first = members[min(seen.values())].vm
        here, there = spec.vms[member.vm].host, spec.vms[first].host
        if here != there:
            yield (
                where,
                f"VM '{member.vm}' runs on {host_key(here)} and '{first}' on "
                f"{host_key(there)}: a shared region lives in one host's memory, so all "
                "its members must run on the same host",
            )
