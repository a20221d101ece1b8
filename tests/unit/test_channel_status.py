"""`kvmctl status`'s channel rows: each channel's kind, host end and members,
and whether each member's live domain carries the device."""

from __future__ import annotations

import dataclasses

import pytest

from kvmctl.observe.channels import channel_status, members_of
from kvmctl.planner.domain import build_domain
from kvmctl.planner.plan import make_plan
from tests.unit.planner_helpers import facts, spec
from tests.unit.test_channels_plan import two

pytestmark = pytest.mark.unit

# a and b share "vehicle" (4MiB); c has a serial port and a vsock device.
SPEC = two() + "  - {kind: serial, name: hb, vm: c}\n  - {kind: vsock, name: ctl, vm: c}\n"


def test_channels_show_kind_host_end_members_and_what_each_member_carries() -> None:
    plan = make_plan(spec(SPEC), facts())
    a, c = (build_domain(plan.vms[vm], rt_by_thread=True) for vm in "ac")
    # b runs without the region (defined before the channel, say); a and c as planned.
    b = build_domain(plan.vms["b"], rt_by_thread=True)
    b = dataclasses.replace(b, devices=dataclasses.replace(b.devices, shmems=()))
    live = {"a": a.to_xml(), "b": b.to_xml(), "c": c.to_xml()}
    assert members_of(plan.channels) == {"a", "b", "c"}
    shm, serial, vsock = channel_status(plan.channels, live)
    assert (shm.channel, shm.kind, shm.host_end, shm.size_mib) == (
        "vehicle",
        "shm",
        "/dev/shm/kvmctl.s1.vehicle",
        4,
    )
    assert [m.cell() for m in shm.members] == ["a (rw, carried)", "b (rw, MISSING)"]
    assert (serial.kind, serial.host_end) == ("serial", plan.channels.serials[0].socket)
    assert serial.host_end.endswith("/s1.c.hb.sock")
    assert [m.cell() for m in serial.members] == ["c (rw, carried)"]
    assert (vsock.kind, vsock.host_end) == ("vsock", f"CID {plan.channels.vsocks[0].cid}")
    assert vsock.as_dict()["members"] == ({"vm": "c", "access": "rw", "carried": True},)


def test_a_member_that_does_not_run_carries_nothing_to_look_at() -> None:
    plan = make_plan(spec(SPEC), facts())
    (shm, serial, _) = channel_status(plan.channels, {"a": None})
    assert [m.carried for m in shm.members] == [None, None]
    assert serial.members[0].cell() == "c (rw, not running)"


def test_a_set_without_channels_has_no_rows() -> None:
    plan = make_plan(spec("name: t\nvms:\n  a: {}\n"), facts())
    assert channel_status(plan.channels, {}) == []
    assert members_of(plan.channels) == set()
