"""Channels planned: host-wide region names, devices only in their members,
a restart when a channel changes, host preflight, CIDs, and the audit rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kvmctl.adapters.virt import DomainInfo
from kvmctl.host.livestate import live_domain
from kvmctl.planner import channel_audit
from kvmctl.planner import channels as chan
from kvmctl.planner.domain import build_domain
from kvmctl.planner.live import LiveDomain, LiveState
from kvmctl.planner.plan import PlanOptions, make_plan
from kvmctl.spec import load_spec
from kvmctl.xml import Shmem
from kvmctl.xml.metadata import read_kvmctl_metadata
from kvmctl.xml.names import shmem_name
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "cockpit-channels.yaml"
MIB = 1024**2

TWO = """\
name: {name}
vms:
  a: {{memory: {{size: 128MiB}}}}
  b: {{memory: {{size: 128MiB}}}}
  c: {{memory: {{size: 128MiB}}}}
channels:
  - {{kind: shm, name: vehicle, size: {size}, members: [a, b]}}
"""


def two(name: str = "s1", size: str = "4MiB") -> str:
    return TWO.format(name=name, size=size)


def example_plan():  # type: ignore[no-untyped-def]
    plan = make_plan(load_spec(EXAMPLE), facts())
    assert plan.problems == []
    return plan


def test_region_names_are_host_wide_and_never_collide() -> None:
    a = make_plan(spec(two("s1")), facts()).channels.regions[0]
    b = make_plan(spec(two("s2")), facts()).channels.regions[0]
    assert (a.name, b.name) == ("kvmctl.s1.vehicle", "kvmctl.s2.vehicle")
    assert a.path == "/dev/shm/kvmctl.s1.vehicle"
    owned = facts().model_copy(update={"qemu_owner": (64055, 64055)})
    plan = make_plan(spec(two("s1")), owned)
    assert plan.channels.owner == plan.vms["a"].channels.owner == (64055, 64055)
    # '-' may sit in both names; '.' in neither, so the split is never ambiguous.
    assert shmem_name("a-b", "c") != shmem_name("a", "b-c")


def test_only_members_carry_the_device() -> None:
    plan = example_plan()
    shmems = {
        vm: [s.name for s in build_domain(p, rt_by_thread=True).devices.shmems]
        for vm, p in plan.vms.items()
    }
    assert shmems == {
        "cluster": ["kvmctl.demo-channels.vehicle-state"],
        "hud": ["kvmctl.demo-channels.vehicle-state"],
        "ivi": ["kvmctl.demo-channels.media-meta"],
        "passenger": ["kvmctl.demo-channels.media-meta"],
    }
    hud = build_domain(plan.vms["hud"], rt_by_thread=True).devices.shmems[0]
    assert hud == Shmem(name="kvmctl.demo-channels.vehicle-state", size_mib=4)
    assert hud.role is None  # QEMU then refuses to migrate or snapshot a member


def test_plan_shows_channels_and_members() -> None:
    plan = example_plan()
    assert plan.channels.lines() == [
        "channel vehicle-state: shm 4MiB at /dev/shm/kvmctl.demo-channels.vehicle-state, "
        "members cluster (rw), hud (rw)",
        "channel media-meta: shm 1MiB at /dev/shm/kvmctl.demo-channels.media-meta, "
        "members ivi (rw), passenger (rw)",
    ]
    (row,) = plan.vms["passenger"].summary()["channels"]  # type: ignore[misc]
    assert row == {
        "channel": "media-meta",
        "kind": "shm",
        "name": "kvmctl.demo-channels.media-meta",
        "size_mib": 1,
        "members": [{"vm": "ivi", "access": "rw"}, {"vm": "passenger", "access": "rw"}],
    }


def test_only_this_hosts_vms_get_channels() -> None:
    cockpit = spec(
        """\
        name: t
        hosts: {soc-b: {uri: "qemu+ssh://b/system"}}
        vms:
          a: {memory: {size: 128MiB}}
          b: {memory: {size: 128MiB}}
          far: {memory: {size: 128MiB}, host: soc-b}
          far2: {memory: {size: 128MiB}, host: soc-b}
        channels:
          - {kind: shm, name: here, size: 1MiB, members: [a, b]}
          - {kind: shm, name: there, size: 1MiB, members: [far, far2]}
          - {kind: serial, name: s, vm: far}
        """
    )
    assert [r.channel for r in make_plan(cockpit, facts()).channels.regions] == ["here"]
    there = make_plan(cockpit, facts(), host="soc-b").channels
    assert [r.channel for r in there.regions] == ["there"]
    assert [s.channel for s in there.serials] == ["s"]


def fingerprinted(text: str, live: LiveState | None = None):  # type: ignore[no-untyped-def]
    return make_plan(spec(text), facts(), live)


def live_of(plan) -> LiveState:  # type: ignore[no-untyped-def]
    return LiveState(
        tuple(
            LiveDomain(
                p.domain,
                True,
                plan.set_name,
                vm,
                p.fingerprint.restart_hash,
                p.fingerprint.live_hash,
                p.fingerprint.groups,
            )
            for vm, p in plan.vms.items()
        )
    )


def test_a_channel_change_restarts_its_members_only() -> None:
    before = fingerprinted(two())
    after = fingerprinted(two(size="8MiB"), live_of(before))
    kinds = {a.vm: (a.kind, a.reasons) for a in after.actions}
    assert kinds == {
        "a": ("restart", ("channels",)),
        "b": ("restart", ("channels",)),
        "c": ("unchanged", ()),
    }


def test_a_vm_without_channels_keeps_its_fingerprint() -> None:
    # VMs planned before channels existed must not restart after an upgrade.
    with_channels = fingerprinted(two())
    without = fingerprinted(two().split("channels:")[0])
    assert "channels" not in with_channels.vms["c"].fingerprint.groups
    assert with_channels.vms["c"].fingerprint == without.vms["c"].fingerprint
    assert "channels" in with_channels.vms["a"].fingerprint.groups


def test_regions_larger_than_dev_shm_stop_preflight() -> None:
    small = facts().model_copy(update={"shm_free_bytes": 6 * MIB})
    text = two() + "  - {kind: shm, name: media, size: 4MiB, members: [b, c]}\n"
    (problem,) = make_plan(spec(text), small).problems
    assert problem.startswith(
        "shared regions vehicle, media need 8MiB in /dev/shm, which has 6MiB free"
    )
    # A region whose file is already there (kept while the set exists) needs no more.
    present = small.model_copy(update={"shm_files": {"kvmctl.s1.vehicle": 4 * MIB}})
    assert make_plan(spec(text), present).problems == []
    # Unknown (a host reached through libvirt only): nothing to judge.
    assert make_plan(spec(text), facts()).problems == []


def test_vsock_needs_vhost_vsock() -> None:
    text = two() + "  - {kind: vsock, name: control, vm: c}\n"
    (problem,) = make_plan(spec(text), facts().model_copy(update={"vhost_vsock": False})).problems
    assert "vsock channel 'control' of VM 'c' needs /dev/vhost-vsock" in problem
    assert "a serial channel (kind: serial)" in problem
    ok = make_plan(spec(text), facts().model_copy(update={"vhost_vsock": True}))
    assert ok.problems == []
    vsock = build_domain(ok.vms["c"], rt_by_thread=True).devices.vsock
    assert vsock is not None and vsock.cid_address == ok.channels.vsocks[0].cid


def test_cids_are_stable_unique_and_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"vm{i}" for i in range(200)]
    cids = chan.assign_cids("s", names)
    assert cids == chan.assign_cids("s", list(reversed(names)))
    assert len(set(cids.values())) == 200
    assert all(chan.CID_FIRST <= c <= chan.CID_LAST for c in cids.values())
    assert chan.assign_cids("s", ["vm1"])["vm1"] == cids["vm1"]
    assert chan.assign_cids("other", ["vm1"])["vm1"] != cids["vm1"]

    class Last:
        def digest(self) -> bytes:  # every VM hashes to the last CID
            return (chan.CID_LAST - chan.CID_FIRST).to_bytes(8, "big")

    monkeypatch.setattr(chan.hashlib, "sha256", lambda _data: Last())
    assert chan.assign_cids("s", ["a", "b", "c"]) == {
        "a": chan.CID_LAST,
        "b": chan.CID_FIRST,
        "c": chan.CID_FIRST + 1,
    }


def test_serial_port_and_its_socket() -> None:
    text = two() + "  - {kind: serial, name: heartbeat, vm: c}\n"
    plan = make_plan(spec(text), facts(), options=PlanOptions(channel_dir="/run/k/ch"))
    (port,) = plan.channels.serials
    assert (port.socket, port.port) == ("/run/k/ch/s1.c.heartbeat.sock", "org.kvmctl.heartbeat")
    channels = build_domain(plan.vms["c"], rt_by_thread=True).devices.channels
    assert [(c.source_path, c.target_name) for c in channels[1:]] == [
        ("/run/k/ch/s1.c.heartbeat.sock", "org.kvmctl.heartbeat")
    ]
    long_dir = PlanOptions(channel_dir="/run/" + "x" * 90)
    (problem,) = make_plan(spec(text), facts(), options=long_dir).problems
    assert "more than the 107 a unix socket path may have" in problem


def test_audit_finds_exactly_the_declared_devices() -> None:
    plan = example_plan()
    hud = plan.vms["hud"]
    domain = build_domain(hud, rt_by_thread=True)
    checks = channel_audit.device_checks(hud, domain.to_xml())
    assert [(c.item, c.planned, c.ok) for c in checks] == [
        ("shmem vehicle-state", "kvmctl.demo-channels.vehicle-state 4MiB", True)
    ]

    def live(*shmems: Shmem) -> str:
        devices = dataclasses.replace(domain.devices, shmems=shmems)
        return dataclasses.replace(domain, devices=devices).to_xml()

    missing = channel_audit.device_checks(hud, live())
    assert [(c.item, c.actual, c.ok) for c in missing] == [("shmem vehicle-state", "absent", False)]
    resized = channel_audit.device_checks(hud, live(Shmem(name=domain.devices.shmems[0].name, size_mib=8)))
    assert [(c.actual, c.ok) for c in resized] == [
        ("kvmctl.demo-channels.vehicle-state 8MiB", False)
    ]
    extra = channel_audit.device_checks(
        hud, live(domain.devices.shmems[0], Shmem(name="kvmctl.demo-channels.media-meta"))
    )
    assert [(c.item, c.planned, c.ok) for c in extra] == [
        ("shmem vehicle-state", "kvmctl.demo-channels.vehicle-state 4MiB", True),
        ("shmem kvmctl.demo-channels.media-meta", "absent", False),
    ]
    # A VM with no channel at all and no device: nothing to check.
    plain = make_plan(spec(two()), facts()).vms["c"]
    assert channel_audit.device_checks(plain, build_domain(plain, rt_by_thread=True).to_xml()) == []


def test_audit_checks_serial_ports_and_the_vsock_device() -> None:
    text = two() + "  - {kind: serial, name: hb, vm: c}\n  - {kind: vsock, name: ctl, vm: c}\n"
    plan = make_plan(spec(text), facts())
    c = plan.vms["c"]
    domain = build_domain(c, rt_by_thread=True)
    checks = channel_audit.device_checks(c, domain.to_xml())
    assert [(x.item, x.ok) for x in checks] == [("serial hb", True), ("vsock cid", True)]
    bare = dataclasses.replace(
        domain,
        devices=dataclasses.replace(
            domain.devices, channels=domain.devices.channels[:1], vsock=None
        ),
    )
    assert [(x.item, x.actual, x.ok) for x in channel_audit.device_checks(c, bare.to_xml())] == [
        ("serial hb", "absent", False),
        ("vsock cid", "absent", False),
    ]
    # The guest agent's channel is libvirt's business, not a declared channel.
    other = make_plan(spec(two()), facts()).vms["c"]
    assert channel_audit.device_checks(other, domain.to_xml())[0].item == "serial org.kvmctl.hb"


def test_a_member_cannot_migrate_with_qemus_reason() -> None:
    from kvmctl.planner.migration import plan_destination

    cockpit = spec(two())
    planned = plan_destination(cockpit, ["a"], facts(), LiveState(), PlanOptions())
    (problem,) = planned.problems
    assert problem.startswith("VM 'a' is a member of shared region 'vehicle': QEMU refuses")
    assert chan.IVSHMEM_BLOCKER in problem
    assert plan_destination(cockpit, ["c"], facts(), LiveState(), PlanOptions()).problems == []


def test_regions_that_left_the_spec_are_listed_for_removal() -> None:
    there = facts().model_copy(
        update={
            "shm_files": {
                "kvmctl.s1.vehicle": MIB,
                "kvmctl.s1.old": MIB,
                "kvmctl.s1-x.old": MIB,  # another set's
            }
        }
    )
    plan = make_plan(spec(two()), there)
    assert plan.channels.stale == ("kvmctl.s1.old",)
    assert plan.channels.lines()[-1] == "region /dev/shm/kvmctl.s1.old: no longer declared, removed"
    assert plan.vms["a"].channels.stale == ()
    assert chan.region_names(spec(two()), ["b"]) == {"kvmctl.s1.vehicle"}
    assert chan.region_names(spec(two()), ["c"]) == set()


def test_members_cannot_migrate_or_save_memory_but_others_can() -> None:
    example = load_spec(EXAMPLE)
    assert chan.migration_refusals(example, ["cluster"])
    refused = chan.memory_snapshot_refusals(example, ["cluster", "hud"])
    assert len(refused) == 2 and all("--disk-only" in r for r in refused)
    assert "shared region 'vehicle-state'" in refused[0]
    plain = spec("name: t\nvms:\n  a: {}\n")
    assert chan.memory_snapshot_refusals(plain, ["a"]) == []
    assert chan.migration_refusals(plain, ["a"]) == []


def test_cids_recorded_in_the_metadata_are_kept_and_never_shared_across_sets() -> None:
    text = two() + "  - {kind: vsock, name: ctl, vm: c}\n"
    first = make_plan(spec(text), facts())
    cid = first.channels.vsocks[0].cid
    # Recorded in the domain's kvmctl metadata, read back into the live state.
    meta = read_kvmctl_metadata(build_domain(first.vms["c"], rt_by_thread=True).to_xml())
    assert meta is not None and meta.vsock_cid == cid
    mine = LiveDomain("s1-c", True, set_name="s1", vm="c", vsock_cid=cid + 7)
    # Kept from one apply to the next, even where the hash would say otherwise.
    kept = make_plan(spec(text), facts(), LiveState((mine,)))
    assert kept.channels.vsocks[0].cid == cid + 7
    # Another set's domain on the host (running or stopped) holds the CID the
    # hash gives: the next free one instead, and the same VM of another set.
    theirs = LiveDomain("s9-x", False, set_name="s9", vm="x", vsock_cid=cid)
    moved = make_plan(spec(text), facts(), LiveState((theirs,)))
    assert moved.channels.vsocks[0].cid == cid + 1
    clash = LiveDomain("s9-x", True, set_name="s9", vm="x", vsock_cid=cid + 7)
    assert make_plan(spec(text), facts(), LiveState((mine, clash))).channels.vsocks[0].cid == cid
    assert LiveState((mine, theirs)).vsock_cids("s1") == ({"c": cid + 7}, {cid: "s9-x"})
    assert live_domain(DomainInfo("s1-c", True, 1, meta)).vsock_cid == cid


def test_assign_cids_keeps_recorded_ones_and_skips_taken_ones() -> None:
    fresh = chan.assign_cids("s", ["a", "b"])
    assert chan.assign_cids("s", ["a", "b"], {"a": 99}, {}) == {"a": 99, "b": fresh["b"]}
    # Two VMs recorded with the same CID (hand-edited metadata): the first by name keeps it.
    both = chan.assign_cids("s", ["a", "b"], {"a": 99, "b": 99})
    assert both["a"] == 99 and both["b"] == fresh["b"]
    taken = {fresh["a"]: "other-x", 99: "other-y"}
    out = chan.assign_cids("s", ["a", "b"], {"b": 99}, taken)
    assert out["a"] not in taken and out["b"] not in taken and out["a"] != out["b"]
