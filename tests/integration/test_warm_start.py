"""Warm start (`boot: {mode: warm}`) on real libvirtd + QEMU under TCG: the
first apply boots cold and saves the VM's state; a stopped VM applied again,
and a VM the supervisor restarts after its QEMU was killed, start warm from
it: the guest kernel's log of the first boot (in guest RAM, its timestamps
unique to that boot) is still there and goes on, its uptime runs on from
before the save, no boot message reaches the console, a file written after
the save is gone (writes after the saved point are discarded), the guest
clock is set to the host's, and readiness is re-checked. A changed spec hash discards the state (cold boot,
the old state removed, a new one saved); a corrupted state falls back to a
cold boot and says so; a warm shm-channel member is refused (exit 2).

One shared-placement VM; the set is named `kvt-ws...` and destroyed and
swept afterwards.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.state import history
from kvmctl.state import warm as warm_records
from kvmctl.state.paths import log_dir
from tests.integration.cockpit_helpers import URI, kvmctl, kvmctl_json, sweep, write_spec
from tests.integration.guest_agent import agent_command
from tests.integration.ops_helpers import (
    SupervisorProcess,
    domain_state,
    guest_run,
    kill_qemu,
    on_domain,
    wait_until,
)

pytestmark = pytest.mark.integration

SET = f"kvt-ws{secrets.token_hex(2)}"
VM = "cl"
DOMAIN = f"{SET}-{VM}"
# TCG on a busy two-core host: a cold boot has taken over a minute.
TIMEOUT = 240


def spec_text(deadline: str = "200s") -> str:
    return (
        f"name: {SET}\nvms:\n  {VM}:\n"
        "    role: cluster\n"
        "    memory: {size: 128MiB}\n"
        "    disk: {size: 32MiB}\n"
        f"    ready: {{probe: agent, timeout: {TIMEOUT}s, deadline: {deadline}}}\n"
        "    boot: {mode: warm}\n"
    )


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = write_spec(tmp_path_factory.mktemp("ws"), spec_text())
    try:
        yield path
    finally:
        kvmctl("destroy", str(path), timeout=180)
        assert sweep(SET) == []
        assert not warm_records.record_path(SET, VM).exists()


def apply(path: Path) -> str:
    run = kvmctl("apply", str(path), timeout=TIMEOUT + 120)
    assert run.returncode == 0, run.stderr + run.stdout
    return run.stdout


def vm_line(out: str) -> str:
    (line,) = [x for x in out.splitlines() if x.startswith(f"{VM}: ")]
    return line


def kernel_log() -> list[str]:
    """The guest kernel's log, timestamps and all: kept in guest RAM, and no
    two boots under TCG log their messages at the same microseconds."""
    return guest_run(DOMAIN, "/bin/dmesg").splitlines()


# Two boots under TCG part within the kernel's first second (the timestamps of
# its messages differ): a log that still begins with the first boot's lines
# past that point is that boot, restored.
SAME_BOOT_AFTER_S = 1.0


def carried(before: list[str], after: list[str]) -> float:
    """The timestamp of the last line of `before` that `after` still begins
    with (0 when none). `before` was read after the state was saved, so the
    lines logged between the save and that read are not in a restored log."""
    n = 0
    for old, new in zip(before, after, strict=False):
        if old != new:
            break
        n += 1
    return stamp(before[n - 1]) if n else 0.0


def continues(before: list[str], after: list[str]) -> bool:
    """`after` is the log of the boot `before` was read from."""
    return carried(before, after) >= SAME_BOOT_AFTER_S


def serial_log() -> str:
    return (log_dir() / f"{DOMAIN}.serial.log").read_text(errors="replace")


def ready_lines() -> int:
    """How many times the console says the guest finished booting."""
    return serial_log().count(f"KVMCTL-READY {VM}")


def uptime() -> float:
    return float(guest_run(DOMAIN, "/bin/cat", "/proc/uptime").split()[0])


def stamp(line: str) -> float:
    m = re.match(r"\[\s*(\d+\.\d+)\]", line)
    assert m, line
    return float(m.group(1))


def guest_clock_offset() -> float:
    guest_ns = on_domain(DOMAIN, URI, lambda dom: agent_command(dom, "guest-get-time"))
    return float(guest_ns) / 1e9 - time.time()


def power_off() -> None:
    on_domain(DOMAIN, URI, lambda dom: dom.destroy())
    wait_until(lambda: domain_state(DOMAIN) == "shut off", 60, f"{DOMAIN} shut off")


def saved_snapshot() -> tuple[str, float] | None:
    """(name, when libvirt took it) of the VM's warm-start snapshot."""
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(DOMAIN)
        for snap in dom.listAllSnapshots(0):
            if snap.getName() == "kvmctl-warm":
                m = re.search(r"<creationTime>(\d+)", snap.getXMLDesc(0))
                return snap.getName(), float(m.group(1)) if m else 0.0
        return None
    finally:
        conn.close()


def status_row(path: Path) -> dict[str, Any]:
    (row,) = kvmctl_json("status", str(path))["vms"]
    return row  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def first(spec: Path) -> dict[str, object]:
    """The first apply: a cold boot that saves the state; the guest's kernel log."""
    plan = kvmctl("plan", str(spec))
    assert plan.returncode == 0 and re.search(rf"^{VM}\t.*\twarm\tcreate", plan.stdout, re.M)
    out = apply(spec)
    return {"out": out, "kernel_log": kernel_log()}


def test_first_apply_boots_cold_and_saves_the_state(spec: Path, first: dict[str, object]) -> None:
    out = str(first["out"])
    assert re.search(r"create, ready in \d+\.\d s \(cold\), deadline 200 s met", vm_line(out)), out
    assert "cold boot: new domain: no saved state" in out
    assert re.search(r"warm-start state saved in \d+\.\d s \(VM spec hash [0-9a-f]{16}\)", out)
    record, unreadable = warm_records.read(SET, VM)
    assert unreadable is None and record is not None and saved_snapshot() is not None
    row = status_row(spec)
    assert row["boot_mode"] == "warm"
    assert row["warm_state"]["current"] is True
    assert row["warm_state"]["spec_hash"] == record.key.spec_hash
    assert history.read(SET)["vms"][VM]["ready"]["cold"] is True


def test_stopped_vm_applied_again_starts_warm(spec: Path, first: dict[str, object]) -> None:
    # Written after the save: a warm start brings the disk and memory back to
    # the saved point, so it is gone afterwards (the documented price).
    guest_run(DOMAIN, "/bin/sh", "-c", "echo later > /tmp/after-save")
    boot_lines = ready_lines()
    power_off()
    time.sleep(3)  # the restored guest's clock must be set, not merely close
    out = apply(spec)
    line = vm_line(out)
    assert re.search(r"start, ready in \d+\.\d s \(warm\), deadline 200 s met", line), out
    assert "warm start: guest clock set" in out
    # Restored, not booted: the first boot's kernel log is still in RAM and
    # goes on; the guest's uptime runs on from before the save; no new boot
    # message on the console (whether the log was emptied at the start or not).
    log = kernel_log()
    assert continues(first["kernel_log"], log), log  # type: ignore[arg-type]
    assert uptime() > carried(first["kernel_log"], log)  # type: ignore[arg-type]
    assert ready_lines() <= boot_lines
    assert guest_run(DOMAIN, "/bin/sh", "-c", "cat /tmp/after-save || echo gone").strip() == "gone"
    assert abs(guest_clock_offset()) < 3.0
    # Readiness was re-checked: the agent answers, as status sees it.
    row = status_row(spec)
    assert row["ready"] is True and row["warm_state"]["current"] is True
    entry = history.read(SET)["vms"][VM]["ready"]
    assert entry["cold"] is False and entry["met"] is True


def test_supervisor_restart_after_kill_starts_warm(
    spec: Path, first: dict[str, object], tmp_path: Path
) -> None:
    sup = SupervisorProcess(spec, tmp_path, "--backoff", "1s")
    try:
        sup.wait(60, event="observed", vm=VM)
        mark = sup.mark()
        kill_qemu(DOMAIN)
        restarted = sup.wait(TIMEOUT, since=mark, event="restarted", vm=VM)
        assert restarted["boot"] == "warm", restarted
        assert any("guest clock set" in n for n in restarted["notes"]), restarted
        assert continues(first["kernel_log"], kernel_log())  # type: ignore[arg-type]
        assert abs(guest_clock_offset()) < 3.0
        assert history.read(SET)["vms"][VM]["ready"]["after"] == "restart"
    finally:
        assert sup.terminate() == 0


def test_changed_spec_hash_discards_the_state(spec: Path, first: dict[str, object]) -> None:
    old, _ = warm_records.read(SET, VM)
    assert old is not None
    old_snap = saved_snapshot()
    assert old_snap is not None
    spec.write_text(spec_text(deadline="210s"))  # the VM's spec hash changes; no restart needed
    assert status_row(spec)["warm_state"]["current"] is False
    power_off()
    time.sleep(1.1)  # a new snapshot's creation time (whole seconds) differs
    out = apply(spec)
    assert re.search(r"start, ready in \d+\.\d s \(cold\)", vm_line(out)), out
    assert f"cold boot: saved state outdated: spec hash {old.key.spec_hash} -> " in out
    assert not continues(first["kernel_log"], kernel_log())  # type: ignore[arg-type]
    new, _ = warm_records.read(SET, VM)
    assert new is not None and new.key.spec_hash != old.key.spec_hash
    new_snap = saved_snapshot()
    assert new_snap is not None and new_snap[1] > old_snap[1]  # the old one was removed
    assert status_row(spec)["warm_state"]["current"] is True


def test_corrupted_state_falls_back_to_cold_and_says_so(spec: Path) -> None:
    before = kernel_log()
    warm_records.record_path(SET, VM).write_text("{not json")
    row = status_row(spec)
    assert row["warm_state"]["current"] is False and "error" in row["warm_state"]
    power_off()
    out = apply(spec)
    assert re.search(r"start, ready in \d+\.\d s \(cold\)", vm_line(out)), out
    assert "cold boot: saved state unusable: " in out and "not a warm-state record" in out
    assert not continues(before, kernel_log())
    record, unreadable = warm_records.read(SET, VM)
    assert unreadable is None and record is not None  # saved afresh


def test_failed_restore_falls_back_to_cold(spec: Path) -> None:
    """The record fits and libvirt lists the snapshot, but its saved state is
    gone from the disk image: the restore fails, the VM boots cold, apply
    says so, and a new state is saved."""
    before = kernel_log()
    power_off()
    volume = on_domain(DOMAIN, URI, _data_volume)
    subprocess.run(["qemu-img", "snapshot", "-d", "kvmctl-warm", volume], check=True)
    out = apply(spec)
    assert re.search(r"start, ready in \d+\.\d s \(cold\)", vm_line(out)), out
    assert "warm start failed: " in out and "fell back to a cold boot" in out
    assert history.read(SET)["vms"][VM]["ready"]["warm_start_failed"]
    assert not continues(before, kernel_log())
    assert saved_snapshot() is not None and warm_records.read(SET, VM)[0] is not None


def _data_volume(dom: libvirt.virDomain) -> str:
    m = re.search(r"<source pool='([^']+)' volume='([^']+-data\.qcow2)'", dom.XMLDesc(0))
    assert m, dom.XMLDesc(0)
    pool = dom.connect().storagePoolLookupByName(m.group(1))
    return str(pool.storageVolLookupByName(m.group(2)).path())


def test_disk_only_snapshot_of_a_warm_vm_is_refused(spec: Path) -> None:
    for args in (("--disk-only", str(spec), VM, "d1"), ("--all", "--disk-only", str(spec), "g1")):
        run = kvmctl("snapshot", "create", *args)
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"vms.{VM}.boot.mode: warm" in run.stderr, run.stderr
    names = on_domain(DOMAIN, URI, lambda dom: [s.getName() for s in dom.listAllSnapshots(0)])
    assert names == ["kvmctl-warm"]


def test_warm_shm_member_is_refused(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        f"name: {SET}x\nvms:\n  a: {{boot: {{mode: warm}}}}\n  b: {{}}\n"
        "channels:\n  - {kind: shm, name: v, size: 1MiB, members: [a, b]}\n",
    )
    run = kvmctl("validate", str(path))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "vms.a.boot.mode" in run.stderr and "shared region 'v'" in run.stderr
