"""Boot deadlines (`ready.deadline`) on real libvirtd + QEMU: a generous one is
met and an impossible one missed, both reported with the figure by apply,
status, the exporter and the history, and apply still succeeds; `kvmctl plan`
then warns that the impossible one cannot be met cold; a supervisor restart
is measured from its decision; a missed `deadline_fatal` fails the apply,
which is rolled back and leaves nothing behind.

Sets are named `kvt-dl...` and `kvt-dx...`; everything is destroyed and swept afterwards.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvmctl.observe import metrics
from kvmctl.observe.exporter import CockpitCollector
from kvmctl.session import open_session
from kvmctl.state import history
from tests.integration.cockpit_helpers import (
    URI,
    kvmctl,
    kvmctl_json,
    set_snapshot,
    sweep,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.ops_helpers import SupervisorProcess, kill_qemu

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(2)
SET = f"kvt-dl{TOKEN}"
FATAL_SET = f"kvt-dx{TOKEN}"  # not a prefix of SET, nor SET of it
GENEROUS = 90.0  # the ready timeout too: met by any boot that is ready at all
IMPOSSIBLE = 0.001  # no guest is ready 1 ms after apply began


def vm(name: str, deadline: float, fatal: bool = False) -> str:
    extra = ", deadline_fatal: true" if fatal else ""
    return (
        f"  {name}:\n"
        "    memory: {size: 128MiB}\n"
        "    disk: {size: 32MiB}\n"
        f'    ready: {{probe: "serial:KVMCTL-READY {name}", timeout: 90s, '
        f"deadline: {deadline:g}s{extra}}}\n"
    )


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The set with one met and one missed deadline, applied; (spec, apply's stdout)."""
    path = write_spec(
        tmp_path_factory.mktemp("dl"),
        f"name: {SET}\nhost: {{housekeeping_cpus: [{worker_housekeeping_cpu()}]}}\nvms:\n"
        + vm("met", GENEROUS)
        + vm("late", IMPOSSIBLE),
    )
    try:
        run = kvmctl("apply", str(path), timeout=300)
        assert run.returncode == 0, run.stderr + run.stdout
        yield path, run.stdout
    finally:
        kvmctl("destroy", str(path), timeout=120)
        assert sweep(SET) == []


def _number(pattern: str, line: str) -> float:
    m = re.search(pattern, line)
    assert m, f"{pattern!r} not in {line!r}"
    return float(m.group(1))


def test_apply_reports_met_and_missed_and_succeeds(applied: tuple[Path, str]) -> None:
    _path, out = applied
    lines = {line.split(":")[0]: line for line in out.splitlines() if ": create" in line}
    met = _number(rf"deadline {GENEROUS:g} s met \((\d+\.\d\d) s\)", lines["met"])
    late = _number(rf"deadline {IMPOSSIBLE:g} s missed \((\d+\.\d\d) s\)", lines["late"])
    assert 0 < met <= GENEROUS and late > IMPOSSIBLE
    # Counted from the start of apply: at least the VM's own boot to ready.
    for name, figure in (("met", met), ("late", late)):
        assert figure >= _number(r"ready in (\d+\.\d) s", lines[name]) - 0.05, lines[name]
    doc = history.read(SET)["vms"]
    assert doc["met"]["ready"]["met"] is True and doc["late"]["ready"]["met"] is False
    assert (
        doc["late"]["ready"]["after"] == "apply" and doc["late"]["ready"]["deadline"] == IMPOSSIBLE
    )
    assert doc["late"]["ready"]["best_cold_seconds"] == pytest.approx(late, abs=0.01)


def test_status_and_exporter_report_the_last_boot(applied: tuple[Path, str]) -> None:
    path, _out = applied
    rows = {r["vm"]: r for r in kvmctl_json("status", str(path))["vms"]}
    assert (rows["met"]["ready_deadline_s"], rows["met"]["deadline_met"]) == (GENEROUS, True)
    assert (rows["late"]["ready_deadline_s"], rows["late"]["deadline_met"]) == (IMPOSSIBLE, False)
    assert rows["late"]["last_ready_s"] > IMPOSSIBLE
    table = kvmctl("status", str(path))
    assert table.returncode == 0, table.stderr
    assert f"deadline {IMPOSSIBLE:g} s missed (" in table.stdout
    session = open_session(path, URI)
    try:
        fams = metrics.families(CockpitCollector(session).scrape())
    finally:
        session.close()
    got: dict[tuple[str, str], Any] = {
        (s.name, s.labels["vm"]): s.value for f in fams for s in f.samples if "vm" in s.labels
    }
    assert got[("kvmctl_vm_ready_deadline_met", "met")] == 1.0
    assert got[("kvmctl_vm_ready_deadline_met", "late")] == 0.0
    assert got[("kvmctl_vm_ready_deadline_seconds", "late")] == IMPOSSIBLE
    assert got[("kvmctl_vm_last_ready_seconds", "late")] == rows["late"]["last_ready_s"]


def test_plan_warns_the_impossible_deadline_cannot_be_met_cold(applied: tuple[Path, str]) -> None:
    path, _out = applied
    run = kvmctl("plan", str(path))
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stdout.splitlines() if "cannot be met by a cold boot" in line]
    assert len(warnings) == 1, run.stdout
    assert re.fullmatch(
        rf"note: VM 'late': ready\.deadline {IMPOSSIBLE:g} s cannot be met by a cold boot: the "
        r"fastest one recorded was ready \d+\.\d\d s after apply began",
        warnings[0],
    ), warnings[0]


def test_supervisor_restart_counts_from_its_decision(
    applied: tuple[Path, str], tmp_path: Path
) -> None:
    path, _out = applied
    sup = SupervisorProcess(path, tmp_path, "--backoff", "1s")
    try:
        sup.wait(30, event="observed", vm="late")
        for name, met in (("late", False), ("met", True)):
            mark = sup.mark()
            kill_qemu(f"{SET}-{name}")
            decision = sup.wait(30, since=mark, event="decision", vm=name)
            assert decision["action"] == "restart", decision
            restarted = sup.wait(120, since=mark, event="restarted", vm=name)
            assert restarted["deadline_met"] is met, restarted
            # From the decision: the backoff and the start come before readiness.
            assert (
                restarted["since_decision_s"] >= restarted["ready_s"] + decision["delay_s"] - 0.05
            )
            assert restarted["ts"] - decision["ts"] >= restarted["since_decision_s"] - 0.5
            entry = history.read(SET)["vms"][name]["ready"]
            assert entry["after"] == "restart" and entry["met"] is met
            assert entry["seconds"] == pytest.approx(restarted["since_decision_s"], abs=0.01)
    finally:
        assert sup.terminate() == 0


def test_missed_fatal_deadline_fails_apply_and_rolls_back(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        f"name: {FATAL_SET}\nvms:\n" + vm("ok", GENEROUS) + vm("fatal", IMPOSSIBLE, fatal=True),
    )
    before = set_snapshot(FATAL_SET)
    try:
        run = kvmctl("apply", str(path), timeout=300)
        assert run.returncode == 1, run.stderr + run.stdout
        (line,) = [x for x in run.stderr.splitlines() if x.startswith("kvmctl:")]
        assert re.fullmatch(
            rf"kvmctl: apply of '{FATAL_SET}' failed and was rolled back: VM 'fatal' missed its "
            rf"ready\.deadline of {IMPOSSIBLE:g} s \(ready after \d+\.\d\d s\), and "
            r"ready\.deadline_fatal is set",
            line,
        ), line
        assert set_snapshot(FATAL_SET) == before  # no domain, volume or link left
        assert history.read(FATAL_SET)["vms"] == {}  # a failed apply records nothing
    finally:
        kvmctl("destroy", str(path), timeout=120)
        assert sweep(FATAL_SET) == []
