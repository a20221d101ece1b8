"""`kvmctl supervise` against real libvirtd + QEMU: crashes, kills, a panicking
kernel and a starved watchdog are each handled for the one VM concerned, and
the other VM's QEMU process, uptime and in-guest counter show it was not
touched. The tests run in order on one set and one supervisor process.

Set: `a` (test-guest-rt, i6300esb watchdog with action reset, policy always)
and `b` (test-guest, depends on a, policy on-failure, max 4 restarts).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from kvmctl.state.supervisor import supervisor_state
from tests.integration.cockpit_helpers import (
    REPO,
    URI,
    kvmctl,
    kvmctl_json,
    sweep,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.ops_helpers import (
    SupervisorProcess,
    counter,
    domain_state,
    ensure_libvirtd,
    guest_run,
    guest_uptime,
    kill_qemu,
    libvirtd_pid,
    qemu_pid,
    tool,
    wait_until,
)

pytestmark = pytest.mark.integration

SET = f"kvt-sv-{secrets.token_hex(2)}"
A, B = f"{SET}-a", f"{SET}-b"
B_MAX = 4
SPEC = f"""
name: {SET}
host: {{housekeeping_cpus: [{worker_housekeeping_cpu()}]}}
vms:
  a:
    memory: {{size: 192MiB}}
    image: {{builtin: test-guest-rt}}
    disk: {{size: 32MiB}}
    watchdog: {{action: reset}}
    ready: {{probe: agent, timeout: 90s}}
    restart: {{policy: always, max: 5, window: 600s}}
  b:
    depends_on: [a]
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
    restart: {{policy: on-failure, max: {B_MAX}, window: 600s}}
"""


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_spec(tmp_path_factory.mktemp("sv"), SPEC)


@pytest.fixture(scope="module")
def sup(spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SupervisorProcess]:
    state_dir = tmp_path_factory.mktemp("sv-state")
    proc: SupervisorProcess | None = None
    try:
        applied = kvmctl("apply", str(spec), timeout=240)
        assert applied.returncode == 0, applied.stderr + applied.stdout
        proc = SupervisorProcess(spec, state_dir, "--backoff", "1s")
        proc.wait(30, event="observed", vm="b")
        for dom in (A, B):
            tool(dom, "counter", "start")
        yield proc
    finally:
        if proc is not None:
            proc.terminate()
        ensure_libvirtd()
        kvmctl("destroy", str(spec), timeout=120)
        leftovers = sweep(SET)
        assert leftovers == [], f"kvmctl destroy left {leftovers}"


def _untouched(domain: str, pid: int, uptime: float, count: int) -> None:
    """Same QEMU process, guest not rebooted, counter went on counting."""
    assert qemu_pid(domain) == pid
    assert guest_uptime(domain) > uptime
    assert counter(domain) > count


def _snapshot(domain: str) -> tuple[int, float, int]:
    pid = qemu_pid(domain)
    assert pid is not None
    return pid, guest_uptime(domain), counter(domain)


def test_killed_vm_alone_is_restarted(sup: SupervisorProcess) -> None:
    other = _snapshot(A)
    mark = sup.mark()
    old = kill_qemu(B)
    decision = sup.wait(30, since=mark, event="decision", vm="b")
    assert decision["cause"] == "killed" and decision["action"] == "restart"
    restarted = sup.wait(120, since=mark, event="restarted", vm="b")
    assert restarted["pid"] not in (None, old) and restarted["pid"] == qemu_pid(B)
    assert domain_state(B) == "running"
    _untouched(A, *other)
    # b once (a retry after a failed attempt would show as restart-failed), a never
    assert sup.count(mark, event="restarted") == 1
    assert sup.count(mark, event="restarting", vm="a") == 0
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())
    assert state["vms"]["b"]["restarts"] == 1 and state["vms"]["a"]["restarts"] == 0
    assert state["vms"]["b"]["phase"] == "running"


def test_dependant_waits_for_its_restarted_dependency(sup: SupervisorProcess) -> None:
    mark = sup.mark()
    kill_qemu(A)
    sup.wait(30, since=mark, event="decision", vm="a")
    kill_qemu(B)
    waiting = sup.wait(30, since=mark, event="waiting-for-dependency", vm="b")
    assert waiting["waiting_on"] == ["a"]
    a_ready = sup.wait(120, since=mark, event="restarted", vm="a")
    b_start = sup.wait(120, since=mark, event="restarting", vm="b")
    sup.wait(120, since=mark, event="restarted", vm="b")
    assert b_start["ts"] >= a_ready["ts"]
    assert sup.count(mark, event="restarted", vm="a") == 1
    assert sup.count(mark, event="restarted", vm="b") == 1
    for dom in (A, B):
        tool(dom, "counter", "start")  # fresh guests: count again


def test_panicked_kernel_is_reset_and_recovers(sup: SupervisorProcess) -> None:
    # Both flavours drive <panic model='isa'/> (ACPI QEMU0001, pvpanic-mmio).
    for dom in (A, B):
        assert "QEMU0001:00" in guest_run(dom, "/bin/ls", "/sys/bus/platform/drivers/pvpanic-mmio")
    other = _snapshot(A)
    pid = qemu_pid(B)
    resets = json.loads((sup.state_dir / f"{SET}.json").read_text())["vms"]["b"]["resets"]
    mark = sup.mark()
    tool(B, "panic", wait=False)
    # pvpanic reports the panic to QEMU: libvirt says crashed/panicked (not a
    # plain reboot), and on_crash=restart resets the same QEMU in place.
    crashed = sup.wait(60, since=mark, event="domain-event", vm="b", kind="crashed")
    assert crashed["detail"] == "panicked"
    decision = sup.wait(10, since=mark, event="decision", vm="b")
    assert (decision["cause"], decision["in_place"], decision["action"]) == (
        "panicked",
        True,
        "recover",
    )
    recovered = sup.wait(120, since=mark, event="recovered", vm="b")
    assert recovered["ready_s"] > 0
    assert qemu_pid(B) == pid  # reset in place, same QEMU
    assert guest_uptime(B) < time.time() - decision["ts"] + 5
    assert domain_state(B) == "running"
    assert sup.count(mark, event="decision") == 1  # the reboot that follows is the same panic
    assert sup.count(mark, event="restarting") == 0
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())["vms"]
    assert state["b"]["last_cause"] == "panicked" and state["b"]["resets"] == resets + 1
    assert state["b"]["phase"] == "running" and state["b"]["ready"] is True
    _untouched(A, *other)
    tool(B, "counter", "start")


def test_starved_watchdog_resets_and_recovers(sup: SupervisorProcess) -> None:
    assert tool(A, "watchdog", "status")["watchdog"] == "petting"
    other = _snapshot(B)
    pid = qemu_pid(A)
    mark = sup.mark()
    tool(A, "watchdog", "stop")
    fired = sup.wait(90, since=mark, event="domain-event", vm="a", kind="watchdog")
    assert fired["detail"] == "reset"
    decision = sup.wait(10, since=mark, event="decision", vm="a")
    assert decision["cause"] == "watchdog" and decision["action"] == "recover"
    sup.wait(120, since=mark, event="recovered", vm="a")
    assert qemu_pid(A) == pid
    assert tool(A, "watchdog", "status")["watchdog"] == "petting"  # a fresh boot pets again
    assert sup.count(mark, event="restarting") == 0
    _untouched(B, *other)
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())
    assert state["vms"]["a"]["resets"] >= 1
    tool(A, "counter", "start")


def test_crash_loop_is_given_up_while_the_other_runs(sup: SupervisorProcess, spec: Path) -> None:
    other = _snapshot(A)
    mark = sup.mark()
    for _ in range(B_MAX + 2):
        round_mark = sup.mark()
        kill_qemu(B)
        decision = sup.wait(30, since=round_mark, event="decision", vm="b")
        if decision["action"] == "give-up":
            break
        assert decision["action"] == "restart"
        sup.wait(120, since=round_mark, event="restarted", vm="b")
    else:
        pytest.fail("the supervisor never gave up on b")
    assert decision["restarts_in_window"] == B_MAX and "giving up" in decision["reason"]
    sup.wait(10, since=mark, event="gave-up", vm="b")
    time.sleep(3)
    assert domain_state(B) == "shut off"  # and it stays so
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())
    # The budget counts restarts and resets after a failure (the panic above).
    b = state["vms"]["b"]
    assert b["gave_up"] is True and b["restarts_in_window"] == B_MAX
    assert b["restarts"] + b["resets"] == B_MAX
    _untouched(A, *other)
    # An operator brings it back: the supervisor takes it on afresh.
    mark = sup.mark()
    result = kvmctl_json("apply", str(spec))
    assert result["vms"]["b"]["action"] == "start" and result["vms"]["a"]["action"] == "unchanged"
    sup.wait(30, since=mark, event="running", vm="b")
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())
    assert state["vms"]["b"]["phase"] == "running" and state["vms"]["b"]["restarts_in_window"] == 0


@pytest.mark.exclusive  # libvirtd goes away for every test running meanwhile
def test_survives_libvirtd_restart_without_duplicate_restarts(sup: SupervisorProcess) -> None:
    a_pid = qemu_pid(A)
    daemon = libvirtd_pid()
    assert daemon is not None
    mark = sup.mark()
    try:
        os.kill(daemon, signal.SIGTERM)
        wait_until(lambda: not psutil.pid_exists(daemon), 30, "libvirtd to exit")
        sup.wait(30, since=mark, event="disconnected")
        # b dies while nobody watches: only the reconcile after reconnecting sees it.
        kill_qemu(B)
        time.sleep(2)
        subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
    finally:
        ensure_libvirtd()
    sup.wait(60, since=mark, event="reconnected")
    restarted = sup.wait(120, since=mark, event="restarted", vm="b")
    assert restarted["pid"] == qemu_pid(B)
    time.sleep(3)  # room for a duplicate to show up
    assert sup.count(mark, event="restarted", vm="b") == 1
    assert sup.count(mark, event="restarting", vm="a") == 0
    assert qemu_pid(A) == a_pid and domain_state(A) == "running"


def test_status_tools_read_the_supervisor_state(sup: SupervisorProcess, spec: Path) -> None:
    state = supervisor_state(SET, sup.state_dir)
    assert state is not None and state["alive"] and state["connected"]
    assert state["vms"]["b"]["restarts"] >= 1 and state["vms"]["a"]["resets"] >= 1
    top = subprocess.run(
        [sys.executable, "-m", "kvmctl.cli", "top", str(spec), "--once", "--json", "-n", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "LIBVIRT_DEFAULT_URI": URI, "KVMCTL_SUPERVISE_DIR": str(sup.state_dir)},
    )
    assert top.returncode == 0, top.stderr
    rows = {r["vm"]: r for r in json.loads(top.stdout)["vms"]}
    b = state["vms"]["b"]
    assert rows["b"]["restarts"] == b["restarts"] + b["resets"]


def test_sigterm_exits_cleanly_and_leaves_vms_running(sup: SupervisorProcess) -> None:
    pids = (qemu_pid(A), qemu_pid(B))
    t0 = time.monotonic()
    assert sup.terminate() == 0
    assert time.monotonic() - t0 < 10
    assert [e["event"] for e in sup.since()[-2:]] == ["stopping", "stopped"]
    state = json.loads((sup.state_dir / f"{SET}.json").read_text())
    assert state["active"] is False
    assert supervisor_state(SET, sup.state_dir)["alive"] is False  # type: ignore[index]
    assert (qemu_pid(A), qemu_pid(B)) == pids
    assert domain_state(A) == domain_state(B) == "running"
    assert "Traceback" not in sup.stderr_path.read_text()
