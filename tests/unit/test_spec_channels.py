"""Channels in the spec: every bad declaration is an error naming its field."""

from __future__ import annotations

import textwrap

import pytest

from kvmctl.errors import SpecError
from kvmctl.spec import parse_spec, spec_hash
from kvmctl.spec.channels import RO_REFUSED

pytestmark = pytest.mark.unit

VMS = """\
name: t
hosts:
  soc-b: {uri: "qemu+ssh://b/system"}
vms:
  a: {}
  b: {}
  c: {}
  far: {host: soc-b}
channels:
"""


def problems(channels: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(VMS + textwrap.dedent(channels), "c.yaml")
    return err.value.problems


def test_the_three_kinds_load() -> None:
    spec = parse_spec(
        VMS
        + "  - {kind: shm, name: vehicle-state, size: 4MiB, members: [a, {vm: b, access: rw}]}\n"
        + "  - {kind: serial, name: heartbeat, vm: a}\n"
        + "  - {kind: vsock, name: control, vm: c}\n"
    )
    shm, serial, vsock = spec.channels
    assert (shm.kind, shm.size, [(m.vm, m.access) for m in shm.members or []]) == (
        "shm",
        4 * 1024**2,
        [("a", "rw"), ("b", "rw")],
    )
    assert (serial.kind, serial.vm, vsock.kind, vsock.vm) == ("serial", "a", "vsock", "c")


def test_a_spec_without_channels_keeps_its_hash() -> None:
    # Running domains and snapshots carry the hash of specs written before channels.
    plain = parse_spec("name: t\nvms:\n  a: {}\n")
    assert spec_hash(plain) == "624f88e6be8bc6b7"  # as before channels existed
    used = parse_spec(
        "name: t\nvms:\n  a: {}\n  b: {}\n"
        "channels: [{kind: shm, name: v, size: 1MiB, members: [a, b]}]\n"
    )
    assert spec_hash(used) != spec_hash(plain)


# (channels text, expected line in c.yaml, fragment)
BAD = {
    "unknown-vm": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, zz]}",
        10,
        "channels[0].members[1].vm: unknown VM 'zz'",
    ),
    "unknown-vm-serial": (
        "- {kind: serial, name: s, vm: zz}",
        10,
        "channels[0].vm: unknown VM 'zz'",
    ),
    "duplicate-name": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, b]}\n- {kind: serial, name: v, vm: a}",
        11,
        "channels[1].name: channel 'v' is already declared (channels[0])",
    ),
    "one-member": (
        "- {kind: shm, name: v, size: 4MiB, members: [a]}",
        10,
        "channels[0].members: a shared region needs at least two members",
    ),
    "no-members": (
        "- {kind: shm, name: v, size: 4MiB}",
        10,
        "channels[0].members: a shared region needs at least two members (0 listed)",
    ),
    "member-twice": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, a]}",
        10,
        "channels[0].members[1].vm: VM 'a' is already a member",
    ),
    "size-not-power-of-two": (
        "- {kind: shm, name: v, size: 3MiB, members: [a, b]}",
        10,
        "channels[0].size: must be a power of two",
    ),
    "size-zero": (
        "- {kind: shm, name: v, size: 0, members: [a, b]}",
        10,
        "channels[0].size: must be a whole number of MiB, at least 1MiB",
    ),
    "size-not-mib": (
        "- {kind: shm, name: v, size: 4KiB, members: [a, b]}",
        10,
        "channels[0].size: must be a whole number of MiB",
    ),
    "size-missing": (
        "- {kind: shm, name: v, members: [a, b]}",
        10,
        "channels[0].size: a shm channel needs size",
    ),
    "ro": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, {vm: b, access: ro}]}",
        10,
        f"channels[0].members[1].access: {RO_REFUSED}",
    ),
    "access-other": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, {vm: b, access: wo}]}",
        10,
        "must be 'rw' or 'ro'",
    ),
    "cross-host": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, far]}",
        10,
        "all its members must run on the same host",
    ),
    "shm-with-vm": (
        "- {kind: shm, name: v, size: 4MiB, members: [a, b], vm: c}",
        10,
        "channels[0].vm: a shm channel lists its VMs under members",
    ),
    "serial-without-vm": (
        "- {kind: serial, name: s}",
        10,
        "channels[0].vm: a serial channel needs vm",
    ),
    "vsock-with-size": (
        "- {kind: vsock, name: s, vm: a, size: 4MiB}",
        10,
        "channels[0].size: a vsock channel takes no size",
    ),
    "vsock-twice": (
        "- {kind: vsock, name: x, vm: a}\n- {kind: vsock, name: y, vm: a}",
        11,
        "channels[1].vm: VM 'a' already has vsock channel 'x'",
    ),
    "bad-kind": (
        "- {kind: pipe, name: p, vm: a}",
        10,
        "channels[0].kind: must be 'shm', 'serial' or 'vsock'",
    ),
    "bad-name": (
        "- {kind: serial, name: 'a/b', vm: a}",
        10,
        "channels[0].name: 'a/b' is not a valid name",
    ),
    "unknown-field": (
        "- {kind: serial, name: s, vm: a, mode: fast}",
        10,
        "channels[0].mode: unknown field 'mode'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_bad_channel(case: str) -> None:
    text, line, fragment = BAD[case]
    found = problems(text.replace("\n", "\n  ").join(["  ", "\n"]))
    assert any(p.startswith(f"c.yaml:{line} ") and fragment in p for p in found), found


def test_every_channel_problem_at_once() -> None:
    found = problems(
        """\
          - {kind: shm, name: v, size: 4MiB, members: [a]}
          - {kind: shm, name: v, size: 4MiB, members: [a, zz]}
          - {kind: serial, name: s}
        """
    )
    assert len(found) == 4, found
