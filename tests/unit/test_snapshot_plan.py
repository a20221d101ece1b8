"""The pure side of snapshots: checks that refuse bad requests before anything
is touched, the tag and manifest formats, commit planning, timing arithmetic
and the qcow2 snapshot table."""

from __future__ import annotations

import json
import struct

import pytest

from kvmctl import cli
from kvmctl.errors import UsageError
from kvmctl.planner.qcow2 import parse_qcow2_snapshots, qcow2_snapshot_table
from kvmctl.planner.snapshot import (
    SnapshotRecord,
    Tag,
    backing_of,
    check_create,
    check_delete,
    check_name,
    check_revert,
    check_spec,
    commit_step,
    overlay_path,
    record_from_xml,
    summarize,
)
from kvmctl.planner.snapshot_group import (
    Manifest,
    Member,
    MemberTiming,
    check_group_create,
    check_group_members,
    latest_group,
    manifest_from_tags,
    manifest_relpath,
    pause_spread_ms,
    pause_window_ms,
    revert_levels,
    spread_ms,
)
from kvmctl.xml.snapshot import ChainLayer, DomainSnapshot, SnapshotDisk

pytestmark = pytest.mark.unit


def rec(
    name: str,
    kind: str = "internal",
    created: int = 100,
    group: str | None = None,
    vm: str = "a",
    current: bool = False,
) -> SnapshotRecord:
    tag = Tag("set", vm, "hash1", group) if group or kind else None
    return SnapshotRecord(
        vm=vm,
        domain=f"set-{vm}",
        name=name,
        created=created,
        kind=kind,  # type: ignore[arg-type]
        has_memory=kind == "internal",
        state="running",
        parent=None,
        current=current,
        overlays=(("vda", f"/pool/set-{vm}-data.{name}.qcow2"),) if kind == "external" else (),
        tag=tag,
    )


# --------------------------------------------------------------------------- names


def test_check_name_is_a_usage_error() -> None:
    assert check_name("ok-1") == "ok-1"
    with pytest.raises(UsageError, match="choose another name"):
        check_name("<x>")


def test_overlay_path_next_to_the_volume() -> None:
    assert overlay_path("/pool/set-a-data.qcow2", "s1") == "/pool/set-a-data.s1.qcow2"
    assert overlay_path("/pool/raw-disk", "s1") == "/pool/raw-disk.s1.qcow2"
    with pytest.raises(UsageError):
        overlay_path("/pool/set-a-data.qcow2", "../../etc/x")


# --------------------------------------------------------------------------- tag


def test_tag_round_trip_and_foreign_descriptions() -> None:
    tag = Tag("set", "a", "h", "g1", True, 12.5)
    assert Tag.decode(tag.encode()) == tag
    assert Tag.decode(Tag("s", "v", "h").encode()) == Tag("s", "v", "h")
    for foreign in (None, "", "my notes", "[1, 2]", '{"other": 1}', '{"kvmctl-snapshot": 1}'):
        assert Tag.decode(foreign) is None


def test_record_from_libvirt_xml() -> None:
    tag = Tag("set", "a", "h", "g1", True, 1.0)
    xml = DomainSnapshot(
        name="g1",
        description=tag.encode(),
        memory="no",
        disks=(SnapshotDisk("vda", "external", "/pool/set-a-data.g1.qcow2", "qcow2"),),
    ).to_xml()
    r = record_from_xml("a", "set-a", xml, current=True)
    assert (r.kind, r.has_memory, r.group, r.current) == ("external", False, "g1", True)
    assert r.overlays == (("vda", "/pool/set-a-data.g1.qcow2"),)
    d = r.as_dict()
    assert d["group"] == "g1" and d["spec_hash"] == "h" and d["frozen"] is True
    assert d["overlays"] == [{"disk": "vda", "file": "/pool/set-a-data.g1.qcow2"}]
    foreign = record_from_xml("a", "set-a", DomainSnapshot(name="x", description="hi").to_xml())
    assert foreign.tag is None and foreign.group is None and foreign.as_dict()["frozen"] is None


# --------------------------------------------------------------------------- checks


def test_create_checks() -> None:
    check_create("a", [rec("s1")], "s2", disk_only=False)
    check_create("a", [rec("s1")], "e1", disk_only=True)
    with pytest.raises(UsageError, match="already has a snapshot named 's1'"):
        check_create("a", [rec("s1")], "s1", disk_only=False)
    with pytest.raises(UsageError, match="disk-only snapshot"):
        check_create("a", [rec("e1", "external")], "s2", disk_only=False)
    check_create("a", [rec("e1", "external")], "e2", disk_only=True)
    with pytest.raises(UsageError):
        check_create("a", [], "a b", disk_only=True)


def test_revert_checks() -> None:
    assert check_revert("a", [rec("s1"), rec("s2")], "s2").name == "s2"
    with pytest.raises(UsageError, match=r"no snapshot 'x' \(it has: s1\)"):
        check_revert("a", [rec("s1")], "x")
    with pytest.raises(UsageError, match="it has: none"):
        check_revert("a", [], "x")
    with pytest.raises(UsageError, match="delete them first"):
        check_revert("a", [rec("s1"), rec("e1", "external")], "s1")


def test_revert_of_disk_only_snapshots_only_to_the_newest() -> None:
    e1, e2 = rec("e1", "external"), rec("e2", "external")
    top = {"/pool/set-a-data.e2.qcow2"}
    assert check_revert("a", [e1, e2], "e2", top) is e2
    with pytest.raises(UsageError, match=r"not its newest disk-only snapshot \(e2\)"):
        check_revert("a", [e1, e2], "e1", top)
    with pytest.raises(UsageError, match="newest"):
        check_revert("a", [e1], "e1", ())  # the disk is elsewhere now


def test_backing_of() -> None:
    assert backing_of("/p/d.e2.qcow2", CHAIN) == CHAIN[1]
    assert backing_of("/p/d.e1.qcow2", CHAIN).volume == "d.qcow2"
    with pytest.raises(UsageError):
        backing_of("/p/nope", CHAIN)
    with pytest.raises(UsageError):
        backing_of("/p/d.e1.qcow2", CHAIN[:2])


def test_delete_checks() -> None:
    assert check_delete("a", [rec("s1")], "s1").name == "s1"
    assert check_delete("a", [rec("s1"), rec("e1", "external")], "e1").kind == "external"
    with pytest.raises(UsageError, match="no snapshot"):
        check_delete("a", [rec("s1")], "s2")
    with pytest.raises(UsageError, match="below the overlay"):
        check_delete("a", [rec("s1"), rec("e1", "external")], "s1")
    with pytest.raises(UsageError, match="delete --all FILE g1"):
        check_delete("a", [rec("g1", group="g1")], "g1")
    assert check_delete("a", [rec("g1", group="g1")], "g1", whole_group=True).group == "g1"


def test_spec_change_needs_force() -> None:
    assert check_spec("h1", "h1", False, "x") is None
    assert check_spec(None, "h1", False, "x") is None  # a foreign snapshot: nothing to compare
    with pytest.raises(UsageError, match="--force"):
        check_spec("h0", "h1", False, "snapshot 's1'")
    note = check_spec("h0", "h1", True, "snapshot 's1'")
    assert note is not None and "h0" in note and "kvmctl apply" in note


def test_group_create_names_every_culprit() -> None:
    records = {"a": [rec("g1")], "b": [], "c": [rec("e", "external", vm="c")]}
    with pytest.raises(UsageError) as err:
        check_group_create("g1", records, disk_only=False)
    assert "VM 'a' already has" in str(err.value) and "VM 'c' has disk-only" in str(err.value)
    check_group_create("g2", {"a": [rec("g1")], "b": []}, disk_only=False)


def _manifest(**kw: object) -> Manifest:
    base: dict[str, object] = {
        "set_name": "set",
        "name": "g1",
        "spec_hash": "hash1",
        "disk_only": False,
        "frozen": True,
        "instant": 1000.25,
        "pause_window_ms": 40.5,
        "pause_spread_ms": 2.0,
        "members": (
            Member("a", "set-a", "g1", 1000.2, 1000.3, 12.0, 1000.19),
            Member("b", "set-b", "g1", 1000.25, 1000.3, 13.0),
        ),
        "levels": (("a",), ("b",)),
    }
    base.update(kw)
    return Manifest(**base)  # type: ignore[arg-type]


def test_group_members_must_all_exist() -> None:
    m = _manifest()
    check_group_members(m, {"a": [rec("g1")], "b": [rec("g1", vm="b")]}, "revert")
    with pytest.raises(UsageError, match=r"VM 'b' \(domain set-b\) no longer exists.*nothing"):
        check_group_members(m, {"a": [rec("g1")], "b": None}, "revert")
    with pytest.raises(UsageError, match="VM 'a' no longer has snapshot 'g1'"):
        check_group_members(m, {"a": [], "b": [rec("g1", vm="b")]}, "revert")


def test_revert_levels_follow_depends_on() -> None:
    levels = [["cluster"], ["hud", "ivi"], ["passenger"]]
    assert revert_levels(levels, ["passenger", "hud", "cluster"]) == [
        ["cluster"],
        ["hud"],
        ["passenger"],
    ]
    assert revert_levels(levels, ["ivi", "gone"]) == [["ivi"], ["gone"]]


# --------------------------------------------------------------------------- commit


CHAIN = (
    ChainLayer(3, file="/p/d.e2.qcow2"),
    ChainLayer(2, file="/p/d.e1.qcow2"),
    ChainLayer(1, pool="kvmctl", volume="d.qcow2"),
)


def test_commit_of_the_active_overlay_pivots() -> None:
    step = commit_step("vda", "/p/d.e2.qcow2", CHAIN)
    assert (step.top, step.base, step.active) == ("vda[3]", "vda[2]", True)


def test_commit_of_an_older_overlay_is_plain() -> None:
    step = commit_step("vda", "/p/d.e1.qcow2", CHAIN)
    assert (step.top, step.base, step.active) == ("vda[2]", "vda[1]", False)


def test_commit_refuses_what_it_cannot_merge() -> None:
    with pytest.raises(UsageError, match="no longer uses"):
        commit_step("vda", "/p/other.qcow2", CHAIN)
    with pytest.raises(UsageError, match="no image below"):
        commit_step("vda", "/p/d.e1.qcow2", CHAIN[:2])
    with pytest.raises(UsageError, match="index"):
        commit_step("vda", "/p/x", (ChainLayer(None, file="/p/x"), ChainLayer(None, file="/p/y")))


# --------------------------------------------------------------------------- timing


def test_pause_window_and_spread() -> None:
    timings = [
        MemberTiming(10.000, 10.004, 10.005, 10.030, 10.031, 10.035),
        MemberTiming(10.001, 10.006, 10.006, 10.040, 10.041, 10.044),
    ]
    assert pause_window_ms(timings) == pytest.approx(44.0)
    assert pause_spread_ms(timings) == pytest.approx(6.0)
    assert pause_window_ms([MemberTiming()]) == 0.0
    assert pause_spread_ms([]) == 0.0
    assert spread_ms([1.0, 1.5, 1.25]) == 500.0
    assert spread_ms([]) == 0.0


# --------------------------------------------------------------------------- manifest


def test_manifest_json_round_trip() -> None:
    m = _manifest()
    data = json.loads(m.to_json())
    assert data["members"]["a"] == {
        "domain": "set-a",
        "snapshot": "g1",
        "paused_at": 1000.2,
        "resumed_at": 1000.3,
        "snapshot_ms": 12.0,
        "pause_requested_at": 1000.19,
    }
    assert data["levels"] == [["a"], ["b"]]
    assert Manifest.from_json(m.to_json()) == m
    assert m.vms == ["a", "b"] and m.member("b") is not None and m.member("z") is None


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"members": 3}'])
def test_manifest_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="not a kvmctl snapshot manifest"):
        Manifest.from_json(text)


def test_manifest_path_refuses_escapes() -> None:
    assert str(manifest_relpath("set", "g1")) == "set/g1.json"
    with pytest.raises(UsageError):
        manifest_relpath("set", "../../etc/passwd")


def test_group_found_again_from_tags() -> None:
    records = {
        "a": rec("g1", group="g1"),
        "b": rec("g1", group="g1", vm="b"),
        "c": rec("other", vm="c"),
    }
    m = manifest_from_tags("set", "g1", records)
    assert m is not None and m.vms == ["a", "b"] and m.spec_hash == "hash1"
    assert manifest_from_tags("set", "nope", records) is None


def test_summary_and_latest_group() -> None:
    records = {
        "a": [rec("s1", created=10), rec("g2", created=30, group="g2")],
        "b": [],
    }
    summary = summarize(records)
    assert summary["a"]["count"] == 2 and summary["a"]["latest"] == "g2"
    assert summary["a"]["latest_group"] == "g2"
    assert summary["b"] == {
        "count": 0,
        "latest": None,
        "latest_created": None,
        "latest_group": None,
    }
    assert (
        latest_group([_manifest(name="old", instant=1.0), _manifest(name="new", instant=2.0)])
        == "new"
    )
    assert latest_group([]) is None


# --------------------------------------------------------------------------- qcow2


def _entry(name: str, vm_state: int, extra: bytes = b"") -> bytes:
    ident = b"1"
    raw = struct.pack(
        ">QIHHIIQII", 0, 0, len(ident), len(name), 1700000000, 0, 0, vm_state, len(extra)
    )
    raw += extra + ident + name.encode()
    return raw + b"\0" * (-len(raw) % 8)


def test_qcow2_snapshot_table() -> None:
    header = bytearray(72)
    header[:4] = b"QFI\xfb"
    struct.pack_into(">IQ", header, 60, 2, 0x30000)
    assert qcow2_snapshot_table(bytes(header)) == (2, 0x30000)
    big = 5 * 1024**3  # over 4 GiB: only in the extra data
    table = _entry("s1", 1234) + _entry("g1", 0, struct.pack(">QQ", big, 64 * 1024**2))
    snaps = parse_qcow2_snapshots(table, 2)
    assert [(s.name, s.vm_state_bytes, s.disk_bytes) for s in snaps] == [
        ("s1", 1234, None),
        ("g1", big, 64 * 1024**2),
    ]
    with pytest.raises(ValueError, match="truncated"):
        parse_qcow2_snapshots(table[:30], 1)
    with pytest.raises(ValueError, match="truncated"):
        parse_qcow2_snapshots(table[:41], 1)
    with pytest.raises(ValueError, match="not a qcow2"):
        qcow2_snapshot_table(b"\0" * 72)


# --------------------------------------------------------------------------- CLI shape


@pytest.mark.parametrize(
    "argv",
    [
        ["snapshot", "create", "/nonexistent.yaml", "a"],  # NAME missing
        ["snapshot", "create", "--all", "/nonexistent.yaml", "a", "b"],  # VM with --all
        ["snapshot", "create", "/nonexistent.yaml", "a", "x<y"],  # name checked first
        ["snapshot", "revert", "/nonexistent.yaml", "a", "$(id)"],
        ["snapshot", "delete", "--all", "/nonexistent.yaml", "a;b"],
    ],
)
def test_cli_refuses_bad_arguments_before_touching_anything(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvmctl: ") and "Traceback" not in err
