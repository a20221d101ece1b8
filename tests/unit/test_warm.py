"""kvmctl.planner.warm: whether a saved state fits the VM as planned now and
whether a start goes warm or cold, for every combination; the record's
round trip; the spec's boot.mode and what validation refuses with it."""

from __future__ import annotations

import itertools

import pytest

from kvmctl.errors import SpecError
from kvmctl.planner import warm
from kvmctl.planner.deadline import cold_warnings
from kvmctl.planner.warm import BootChoice, Found, WarmKey, WarmRecord, choose
from kvmctl.spec import parse_spec, spec_hash
from kvmctl.state import history

pytestmark = pytest.mark.unit

KEY = WarmKey("aaaa", "img1", "def1")
RECORD = WarmRecord("s-vm", KEY, 1.0)
VALID = Found(record=RECORD, snapshot=True)


def test_a_fitting_state_starts_warm() -> None:
    assert choose("warm", "start", KEY, VALID) == BootChoice("warm")


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (WarmKey("bbbb", "img1", "def1"), "spec hash aaaa -> bbbb"),
        (WarmKey("aaaa", "img2", "def1"), "image version img1 -> img2"),
        (WarmKey("aaaa", "img1", "def2"), "planned definition changed"),
    ],
)
def test_any_change_of_the_key_discards_and_saves_again(key: WarmKey, words: str) -> None:
    got = choose("warm", "start", key, VALID)
    assert (got.path, got.discard, got.save) == ("cold", True, True)
    assert words in got.reason and got.reason.startswith("saved state outdated")


def test_all_changes_are_named() -> None:
    got = choose("warm", "start", WarmKey("bbbb", "img2", "def2"), VALID)
    assert got.reason.count("->") == 2 and "definition" in got.reason


def test_unknown_image_version_never_matches_nor_saves() -> None:
    got = choose("warm", "start", WarmKey("aaaa", None, "def1"), VALID)
    assert (got.path, got.discard, got.save) == ("cold", True, False)
    got = choose("warm", "create", WarmKey("aaaa", None, "def1"), Found())
    assert (got.path, got.save) == ("cold", False)


def test_missing_snapshot_discards_the_record() -> None:
    got = choose("warm", "start", KEY, Found(record=RECORD, snapshot=False))
    assert (got.path, got.discard, got.save) == ("cold", True, True)
    assert "missing" in got.reason


def test_unreadable_record_discards_whatever_is_there() -> None:
    got = choose("warm", "start", KEY, Found(unreadable="bad json", snapshot=True))
    assert (got.path, got.discard, got.save) == ("cold", True, True)
    assert "bad json" in got.reason


def test_no_record_yet_boots_cold_and_saves_dropping_an_orphan_snapshot() -> None:
    assert choose("warm", "start", KEY, Found()) == BootChoice(
        "cold", discard=False, save=True, reason="no saved state yet"
    )
    assert choose("warm", "start", KEY, Found(snapshot=True)).discard


@pytest.mark.parametrize("action", ["create", "restart"])
def test_new_or_redefined_domain_boots_cold_and_saves(action: str) -> None:
    got = choose("warm", action, KEY, VALID)
    assert (got.path, got.discard, got.save) == ("cold", True, True)
    assert got.reason.endswith(": its old saved state removed")
    fresh = choose("warm", action, KEY, Found())
    assert not fresh.discard and fresh.reason.endswith(": no saved state")


def test_disk_only_snapshots_block_restore_delete_and_save() -> None:
    got = choose("warm", "start", KEY, Found(record=RECORD, snapshot=True, disk_only=("s1",)))
    assert (got.path, got.discard, got.save) == ("cold", False, False)
    assert "s1" in got.reason


def test_cold_mode_removes_any_state_and_never_saves() -> None:
    assert choose("cold", "start", KEY, Found()) == BootChoice("cold")
    for found in (VALID, Found(unreadable="x"), Found(snapshot=True)):
        got = choose("cold", "start", KEY, found)
        assert (got.path, got.discard, got.save) == ("cold", True, False)
    under = Found(record=RECORD, snapshot=True, disk_only=("s1",))
    assert choose("cold", "start", KEY, under) == BootChoice("cold")


ACTIONS = ("create", "restart", "start")
FOUNDS = [
    Found(record, unreadable, snapshot, disk_only)
    for record, unreadable, snapshot, disk_only in itertools.product(
        (None, RECORD), (None, "x"), (False, True), ((), ("s1",))
    )
    if not (record is not None and unreadable is not None)
]
KEYS = (KEY, WarmKey("bbbb", "img1", "def1"), WarmKey("aaaa", None, "def1"))


@pytest.mark.parametrize(
    ("mode", "action", "key", "found"),
    list(itertools.product(("cold", "warm"), ACTIONS, KEYS, FOUNDS)),
)
def test_every_combination_is_consistent(
    mode: str, action: str, key: WarmKey, found: Found
) -> None:
    got = choose(mode, action, key, found)
    fits = (
        found.record is not None
        and found.record.key == key
        and key.image is not None
        and found.snapshot
        and found.unreadable is None
        and not found.disk_only
    )
    # Warm exactly when a fitting state exists for a stopped, defined domain.
    assert (got.path == "warm") == (mode == "warm" and action == "start" and fits)
    # A warm start keeps its state; a cold one never saves over disk-only
    # snapshots nor without an image version, and saves only in warm mode.
    if got.path == "warm":
        assert not got.discard and not got.save
    if got.save:
        assert mode == "warm" and key.image is not None and not found.disk_only
    if got.path == "cold" and mode == "warm":
        assert got.reason
    # Something stale is never kept when it is not going to be used, unless
    # disk-only snapshots sit on it (then it cannot be deleted).
    stale = found.record is not None or found.unreadable is not None or found.snapshot
    if got.path == "cold" and stale and not found.disk_only:
        no_record_yet = found.record is None and found.unreadable is None
        assert got.discard or (no_record_yet and not found.snapshot)


def test_after_failure_discards_and_saves_again() -> None:
    got = warm.after_failure("revert failed")
    assert (got.path, got.discard, got.save) == ("cold", True, True)
    assert got.reason == "warm start failed: revert failed"


def test_record_round_trip_and_corruption() -> None:
    assert WarmRecord.decode(RECORD.encode()) == RECORD
    none_image = WarmRecord("d", WarmKey("a", None, "b"), 2.0)
    assert WarmRecord.decode(none_image.encode()) == none_image
    for bad in ("", "{", "[]", '{"domain": "d"}', RECORD.encode().replace("kvmctl-warm", "x")):
        with pytest.raises(ValueError):
            WarmRecord.decode(bad)


def test_disk_only_names() -> None:
    kinds = [("a", "internal"), ("b", "external"), ("c", "external")]
    assert warm.disk_only_names(kinds) == ("b", "c")


# --------------------------------------------------------------------------- spec

SHM = "channels:\n  - {kind: shm, name: v, size: 1MiB, members: [a, b]}\n"


def test_boot_mode_defaults_cold_and_keeps_old_hashes() -> None:
    plain = parse_spec("name: t\nvms:\n  a: {}\n")
    assert plain.vms["a"].boot.mode == "cold"
    assert "boot" not in plain.vms["a"].model_dump()
    explicit = parse_spec("name: t\nvms:\n  a: {boot: {mode: cold}}\n")
    assert spec_hash(explicit) == spec_hash(plain)
    warm_spec = parse_spec("name: t\nvms:\n  a: {boot: {mode: warm}}\n")
    assert warm_spec.vms["a"].boot.mode == "warm" and spec_hash(warm_spec) != spec_hash(plain)


def _refused(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, "c.yaml")
    assert err.value.exit_code == 2
    return err.value.problems


def test_warm_shm_member_is_refused_naming_the_field() -> None:
    text = "name: t\nvms:\n  a: {boot: {mode: warm}}\n  b: {}\n" + SHM
    (problem,) = _refused(text)
    assert "vms.a.boot.mode" in problem and "shared region 'v'" in problem
    parse_spec("name: t\nvms:\n  a: {}\n  b: {}\n" + SHM)  # cold members are fine


def test_warm_with_a_serial_marker_probe_is_refused() -> None:
    text = 'name: t\nvms:\n  a: {boot: {mode: warm}, ready: {probe: "serial:UP"}}\n'
    (problem,) = _refused(text)
    assert problem.startswith("c.yaml:3 vms.a.boot.mode: ") and "serial:UP" in problem
    parse_spec(
        "name: t\nvms:\n  a: {boot: {mode: warm}, ready: {probe: cloud-init}, "
        "image: {builtin: debian-12}}\n"
    )


def test_unknown_boot_mode_is_refused() -> None:
    (problem,) = _refused("name: t\nvms:\n  a: {boot: {mode: hot}}\n")
    assert "vms.a.boot.mode" in problem


def test_plan_warning_for_a_warm_vm_says_a_warm_start_can_meet_it() -> None:
    vms = parse_spec(
        "name: t\nvms:\n  a: {ready: {deadline: 1s}, boot: {mode: warm}}\n"
        "  b: {ready: {deadline: 1s}}\n"
    ).vms
    a, b = cold_warnings(vms, {"a": 5.0, "b": 5.0})
    assert a.endswith("a warm start (boot.mode warm) can, from its saved state")
    assert b.endswith("after apply began")


def test_history_tells_the_last_boot_path() -> None:
    doc = {"vms": {"a": {"ready": {"cold": False}}, "b": {"ready": {"seconds": 1}}, "c": {}}}
    assert [history.last_boot(doc, v) for v in ("a", "b", "c", "d")] == [
        "warm",
        "cold",
        None,
        None,
    ]


def test_disk_only_snapshots_of_warm_vms_are_refused_naming_the_field() -> None:
    (refusal,) = warm.disk_only_refusals({"a": "warm", "b": "cold"}, ["a", "b", "c"])
    assert refusal.startswith("VM 'a' starts warm (vms.a.boot.mode: warm)")
    assert warm.disk_only_refusals({"a": "cold"}, ["a"]) == []


def test_history_keeps_a_failed_warm_start() -> None:
    r = history.Readiness(5.0, None, None, "restart", cold=True, fallback="revert failed")
    entry = history.merge_ready({}, "t", {"a": r}, 1.0)["vms"]["a"]["ready"]
    assert entry["warm_start_failed"] == "revert failed" and entry["cold"] is True
    plain = history.merge_ready({}, "t", {"a": history.Readiness(5.0)}, 1.0)
    assert "warm_start_failed" not in plain["vms"]["a"]["ready"]
