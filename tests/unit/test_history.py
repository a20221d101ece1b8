"""kvmctl.state.history: the last snapshot and migration durations of each VM."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from kvmctl.observe.status import VmStatus, add_history
from kvmctl.state import history

pytestmark = pytest.mark.unit


def test_merge_keeps_the_newest_of_each_kind() -> None:
    doc = history.merge({}, "s", "snapshot", {"a": 1.23456, "b": 2}, at=100.0, name="one")
    doc = history.merge(doc, "s", "migration", {"a": 9.5}, at=101.0, name="soc-b")
    doc = history.merge(doc, "s", "snapshot", {"a": 0.5}, at=102.0, name="two")
    assert doc == {
        "set": "s",
        "vms": {
            "a": {
                "snapshot": {"seconds": 0.5, "at": 102.0, "name": "two"},
                "migration": {"seconds": 9.5, "at": 101.0, "name": "soc-b"},
            },
            "b": {"snapshot": {"seconds": 2.0, "at": 100.0, "name": "one"}},
        },
    }
    assert history.last_seconds(doc, "a", "snapshot") == 0.5
    assert history.last_seconds(doc, "a", "migration") == 9.5
    assert history.last_seconds(doc, "b", "migration") is None
    assert history.last_seconds(doc, "zz", "snapshot") is None
    assert history.last_seconds({}, "a", "snapshot") is None


def test_merge_does_not_change_its_input_and_rounds() -> None:
    first = history.merge({}, "s", "snapshot", {"a": 1.0}, at=1.0)
    copy = json.loads(json.dumps(first))
    second = history.merge(first, "s", "snapshot", {"a": 1.23456789}, at=2.0)
    assert first == copy
    assert second["vms"]["a"]["snapshot"] == {"seconds": 1.235, "at": 2.0}


def test_unknown_kind_refused() -> None:
    with pytest.raises(ValueError, match="unknown operation kind"):
        history.merge({}, "s", "backup", {"a": 1.0}, at=1.0)


def test_last_seconds_ignores_junk() -> None:
    assert (
        history.last_seconds({"vms": {"a": {"snapshot": {"seconds": "x"}}}}, "a", "snapshot")
        is None
    )
    assert history.last_seconds({"vms": {"a": {"snapshot": None}}}, "a", "snapshot") is None


def test_record_read_forget(tmp_path: Path) -> None:
    assert history.read("s", tmp_path) == {"set": "s", "vms": {}}
    assert history.record("s", "snapshot", {"a": 1.5}, name="x", at=10.0, directory=tmp_path)
    assert history.record("s", "migration", {"a": 3.0}, at=11.0, directory=tmp_path)
    doc = history.read("s", tmp_path)
    assert history.last_seconds(doc, "a", "snapshot") == 1.5
    assert history.last_seconds(doc, "a", "migration") == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.lock"]
    history.forget("s", tmp_path)
    assert list(tmp_path.iterdir()) == []
    history.forget("s", tmp_path)  # twice is fine


def test_environment_chooses_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_HISTORY_DIR", str(tmp_path / "h"))
    assert history.record("s", "snapshot", {"a": 1.0})
    assert (tmp_path / "h" / "s.json").is_file()


def test_unreadable_file_reads_as_empty(tmp_path: Path) -> None:
    (tmp_path / "s.json").write_text("{not json")
    assert history.read("s", tmp_path) == {"set": "s", "vms": {}}
    (tmp_path / "s.json").write_text("[1, 2]")
    assert history.read("s", tmp_path) == {"set": "s", "vms": {}}
    # and a record replaces it
    assert history.record("s", "snapshot", {"a": 1.0}, directory=tmp_path)
    assert history.last_seconds(history.read("s", tmp_path), "a", "snapshot") == 1.0


def test_unwritable_directory_does_not_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert history.record("s", "snapshot", {"a": 1.0}, directory=blocker / "sub") is False


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    def write(vm: str) -> None:
        for i in range(20):
            history.record("s", "snapshot", {vm: float(i)}, directory=tmp_path)

    workers = [threading.Thread(target=write, args=(f"vm{n}",)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    doc = history.read("s", tmp_path)
    assert {vm: history.last_seconds(doc, vm, "snapshot") for vm in doc["vms"]} == {
        f"vm{n}": 19.0 for n in range(4)
    }


def test_status_rows_carry_the_durations() -> None:
    rows = [VmStatus("a", "s-a", "running"), VmStatus("b", "s-b", "shut off")]
    doc = history.merge({}, "s", "snapshot", {"a": 2.0}, at=1.0)
    doc = history.merge(doc, "s", "migration", {"b": 7.0}, at=1.0)
    add_history(rows, {"a": {"restarts": 1}}, {"a": {"count": 2, "latest": "x"}}, doc)
    assert (rows[0].last_snapshot_seconds, rows[0].last_migration_seconds) == (2.0, None)
    assert (rows[1].last_snapshot_seconds, rows[1].last_migration_seconds) == (None, 7.0)
    assert (rows[0].restarts, rows[0].snapshots, rows[1].restarts) == (1, 2, None)


def test_readiness_keeps_the_newest_and_the_fastest_cold_boot() -> None:
    r = history.Readiness
    doc = history.merge_ready({}, "s", {"a": r(4.61234, 2.0, False)}, at=100.0)
    doc = history.merge_ready(doc, "s", {"a": r(3.5, 2.0, False, after="restart")}, at=101.0)
    doc = history.merge_ready(doc, "s", {"a": r(5.0, 6.0, True)}, at=102.0)
    doc = history.merge_ready(doc, "s", {"b": r(0.3, cold=False)}, at=103.0)
    assert doc["vms"]["a"]["ready"] == {
        "seconds": 5.0,
        "at": 102.0,
        "after": "apply",
        "cold": True,
        "deadline": 6.0,
        "met": True,
        "best_cold_seconds": 3.5,
    }
    # A start from a saved state is no cold boot: no fastest cold boot from it.
    assert "best_cold_seconds" not in doc["vms"]["b"]["ready"]
    assert history.best_cold(doc) == {"a": 3.5}
    assert history.last_seconds(doc, "a", "ready") == 5.0


def test_readiness_sits_beside_the_other_kinds(tmp_path: Path) -> None:
    assert history.record("s", "snapshot", {"a": 1.5}, name="x", at=10.0, directory=tmp_path)
    ready = {"a": history.Readiness(2.25, 3.0, True)}
    assert history.record_ready("s", ready, at=11.0, directory=tmp_path)
    doc = history.read("s", tmp_path)
    assert history.last_seconds(doc, "a", "snapshot") == 1.5
    assert history.last_seconds(doc, "a", "ready") == 2.25
    assert history.best_cold(doc) == {"a": 2.25}
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert history.record_ready("s", ready, directory=blocker / "sub") is False


def test_best_cold_ignores_junk() -> None:
    doc = {"vms": {"a": {"ready": {"best_cold_seconds": "x"}}, "b": {"ready": None}, "c": None}}
    assert history.best_cold(doc) == {}
    assert history.best_cold({"vms": {"a": {"ready": {"best_cold_seconds": True}}}}) == {}


def test_status_rows_judge_the_last_boot_against_the_deadline() -> None:
    rows = [
        VmStatus("a", "s-a", "running", ready_deadline_s=2.0),
        VmStatus("b", "s-b", "running", ready_deadline_s=5.0),
        VmStatus("c", "s-c", "running"),
        VmStatus("d", "s-d", "running", ready_deadline_s=1.0),
    ]
    r = history.Readiness
    doc = history.merge_ready({}, "s", {"a": r(4.5), "b": r(4.5), "c": r(1.0)}, at=1.0)
    add_history(rows, {}, {}, doc)
    assert [(x.last_ready_s, x.deadline_met) for x in rows] == [
        (4.5, False),
        (4.5, True),
        (1.0, None),
        (None, None),
    ]
