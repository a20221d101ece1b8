"""Snapshots on real libvirt + QEMU guests (TCG): what comes back is checked
inside the guests.

Each guest runs kvmctl-tool's counter (incremented every 100 ms in memory,
mirrored to /data/counter). After a revert the counter and the file must be
the snapshot's values plus at most what the guest counted since it was
resumed, files written after the snapshot must be gone, and the guest's own
clock must be back at the instant it was paused: the guest clock stops while
a VM is paused and is part of its saved state, so `resumed_at - offset_after
+ offset_before` is the host time at which that VM's state was captured
(offsets are host minus guest time, read with guest-get-time, ~2 ms round
trips). For a group, those instants must all lie inside the pause window.

One set of four small shared VMs serves the whole module, in file order; the
last tests remove one VM (destroyed member) and kill another (failure
during a group snapshot). `kvmctl destroy` in the finalizer must leave no
domain, volume or overlay file behind, snapshots notwithstanding.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from tests.integration.cockpit_helpers import (
    URI,
    host_snapshot,
    kvmctl,
    kvmctl_json,
    kvmctl_popen,
    qemu,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.guest_agent import agent_command, exec_start, exec_status

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(2)
SET = f"kvt-snap-{TOKEN}"
VMS = ("cl", "hud", "ivi", "pas")
POOL_DIR = Path("/var/lib/kvmctl/volumes")
TICK = 0.1  # kvmctl-tool counter period


def _vm(name: str, extra: str = "", hugepages: bool = False) -> str:
    memory = "{size: 128MiB, hugepages: 2MiB}" if hugepages else "{size: 128MiB}"
    return (
        f"  {name}:\n{extra}"
        "    cpu: {placement: shared}\n"
        f"    memory: {memory}\n"
        "    image: {builtin: test-guest}\n"
        "    disk: {size: 64MiB}\n"
        "    ready: {probe: agent, timeout: 90s}\n"
    )


HEAD = f"name: {SET}\nhost:\n  housekeeping_cpus: [{worker_housekeeping_cpu()}]\nvms:\n"
FULL = (
    HEAD
    + _vm("cl", "    role: instrument-cluster\n", hugepages=True)
    + _vm("hud", "    depends_on: [cl]\n")
    + _vm("ivi")
    + _vm("pas")
)
REDUCED = (
    HEAD
    + _vm("cl", "    role: instrument-cluster\n", hugepages=True)
    + _vm("hud", "    depends_on: [cl]\n")
    + _vm("ivi")
)
CHANGED = FULL.replace("  ivi:\n", "  ivi:\n    role: infotainment\n")


def dom_name(vm: str) -> str:
    return f"{SET}-{vm}"


# --------------------------------------------------------------------------- guests


class Guests:
    """Agent calls on the set's domains, on a connection that is reopened if
    libvirtd restarted meanwhile."""

    def __init__(self) -> None:
        self._conn = libvirt.open(URI)

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn.isAlive() != 1:
            self._conn = libvirt.open(URI)
        return self._conn

    def _retry(self, call: Any) -> Any:
        """Other suites on this host restart libvirtd: reconnect once and retry."""
        try:
            return call()
        except libvirt.libvirtError as err:
            if err.get_error_domain() != libvirt.VIR_FROM_RPC and "pipe" not in str(err):
                raise
            time.sleep(2)
            self._conn = libvirt.open(URI)
            return call()

    def dom(self, vm: str) -> libvirt.virDomain:
        return self._retry(lambda: self.conn.lookupByName(dom_name(vm)))

    def state(self, vm: str) -> int:
        return int(self._retry(lambda: self.dom(vm).state()[0]))

    def agent(self, vm: str, command: str, args: dict[str, Any] | None = None) -> Any:
        return self._retry(lambda: agent_command(self.dom(vm), command, args))

    def sh(self, vm: str, script: str, *args: str, timeout: float = 30) -> str:
        """`sh -c script sh args...` in the guest; stdout. Fails on a non-zero exit."""
        argv = ["-c", script, "sh", *args]
        pid = self._retry(lambda: exec_start(self.dom(vm), "/bin/sh", argv))
        deadline = time.monotonic() + timeout
        while True:
            res = self._retry(lambda: exec_status(self.dom(vm), pid))
            if res is not None:
                assert res.ok, f"{vm}: {script!r} failed: {res.stdout}{res.stderr}"
                return res.stdout
            assert time.monotonic() < deadline, f"{vm}: {script!r} still running"
            time.sleep(0.02)

    def start_counter(self, vm: str) -> None:
        """Start the toolbox counter and return once it has written both files:
        its loop runs detached, so `counter start` returns before the first tick."""
        self.sh(
            vm,
            "kvmctl-tool counter start >/dev/null && "
            "until kvmctl-tool counter read | grep -q 'memory=[0-9].* disk=[0-9]'; "
            "do usleep 20000; done",
        )

    def counter(self, vm: str) -> tuple[int, int]:
        """(in-memory counter, /data/counter) in one guest-exec."""
        fields = dict(w.split("=", 1) for w in self.sh(vm, "kvmctl-tool counter read").split())
        return int(fields["memory"]), int(fields["disk"])

    def clock_offset(self, vm: str, samples: int = 7) -> tuple[float, float]:
        """(host minus guest wall clock, round trip) of the tightest of `samples`."""
        best: tuple[float, float] | None = None
        for _ in range(samples):
            t0 = time.time()
            guest_ns = self.agent(vm, "guest-get-time")
            t1 = time.time()
            sample = ((t0 + t1) / 2 - guest_ns / 1e9, t1 - t0)
            if best is None or sample[1] < best[1]:
                best = sample
        assert best is not None
        return best

    def exists(self, vm: str, path: str) -> bool:
        return self.sh(vm, 'if [ -e "$1" ]; then echo yes; else echo no; fi', path).strip() == "yes"


@pytest.fixture(scope="module")
def guests() -> Guests:
    return Guests()


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("snap")
    return {
        "full": write_spec(tmp, FULL, "full.yaml"),
        "reduced": write_spec(tmp, REDUCED, "reduced.yaml"),
        "changed": write_spec(tmp, CHANGED, "changed.yaml"),
        "manifests": tmp / "manifests",
    }


@pytest.fixture(scope="module")
def cockpit(specs: dict[str, Path], guests: Guests) -> Iterator[Path]:
    old = os.environ.get("KVMCTL_SNAPSHOT_DIR")
    os.environ["KVMCTL_SNAPSHOT_DIR"] = str(specs["manifests"])
    try:
        result = kvmctl_json("apply", str(specs["full"]))
        assert set(result["vms"]) == set(VMS)
        for vm in VMS:
            guests.start_counter(vm)
        yield specs["full"]
    finally:
        for _attempt in range(3):  # libvirtd may be restarting under another suite
            run = kvmctl("destroy", str(specs["full"]))
            if run.returncode == 0:
                break
            time.sleep(5)
        if old is None:
            os.environ.pop("KVMCTL_SNAPSHOT_DIR", None)
        else:
            os.environ["KVMCTL_SNAPSHOT_DIR"] = old
        after = host_snapshot(SET)
        assert run.returncode == 0, run.stderr
        assert after["domains"] == [] and after["volumes"] == [], after
        leftovers = (
            [f for f in os.listdir(POOL_DIR) if f.startswith(SET)] if POOL_DIR.is_dir() else []
        )
        assert leftovers == [], leftovers


def snapshots(spec: Path, vm: str | None = None) -> dict[str, Any]:
    return kvmctl_json("snapshot", "list", str(spec), *([vm] if vm else []))


def pids(vms: tuple[str, ...] = VMS) -> dict[str, int]:
    return {vm: qemu(dom_name(vm)).pid for vm in vms}


def assert_restored(
    guests: Guests,
    vm: str,
    before: tuple[int, int],
    after: tuple[int, int],
    live: tuple[int, int],
    resumed_at: float,
) -> int:
    """The counter is the snapshot's plus at most what was counted since the
    resume; /data/counter agrees with it. Returns the counter read."""
    mem, disk = guests.counter(vm)
    since_resume = time.time() - resumed_at
    # At most one tick per 100 ms since the resume: what it had when resumed was
    # below what it had reached before the revert. (Not `mem < live`: a member
    # resumed in the first level counts on while the revert waits for the next.)
    at_resume = mem - since_resume / TICK
    assert at_resume < live[0], (
        f"{vm}: counter {mem}, {at_resume:.0f} at the resume, did not go back "
        f"(was {live[0]} before revert)"
    )
    assert mem >= before[0], f"{vm}: counter {mem} is older than the snapshot ({before[0]})"
    # The snapshot's value is at most `after` (read right after it was taken);
    # since the resume the guest ran `since_resume` seconds: one tick per 100 ms.
    assert mem - after[0] <= since_resume / TICK + 1, (vm, mem, after, since_resume)
    assert disk in (mem - 1, mem), f"{vm}: /data/counter {disk} vs memory {mem}"
    return mem


# --------------------------------------------------------------------------- one VM


def test_single_revert_restores_counter_in_memory_and_file(cockpit: Path, guests: Guests) -> None:
    before = guests.counter("ivi")
    created = kvmctl_json("snapshot", "create", str(cockpit), "ivi", "s1")
    after = guests.counter("ivi")
    assert created["kind"] == "internal" and created["memory"] is True
    time.sleep(1.5)
    guests.sh("ivi", "echo later >/data/after-s1 && sync")
    live = guests.counter("ivi")
    assert live[0] > after[0] + 5

    reverted = kvmctl_json("snapshot", "revert", str(cockpit), "ivi", "s1")
    assert_restored(guests, "ivi", before, after, live, reverted["vms"]["ivi"]["resumed_at"])
    assert not guests.exists("ivi", "/data/after-s1")
    # and it keeps counting
    time.sleep(0.5)
    assert guests.counter("ivi")[0] > before[0]

    rows = [s for s in snapshots(cockpit, "ivi")["snapshots"] if s["name"] == "s1"]
    assert len(rows) == 1
    row = rows[0]
    assert (row["kind"], row["memory"], row["group"]) == ("internal", True, None)
    assert row["size_bytes"] and row["size_bytes"] > 1024**2  # the saved RAM
    assert row["created"] and row["spec_hash"]


def test_hugepage_vm_keeps_backing_and_pinning_after_revert(cockpit: Path, guests: Guests) -> None:
    plan = {v["vm"]: v for v in kvmctl_json("plan", str(cockpit))["vms"]}["cl"]
    planned = {int(c) for c in plan["vcpus"]["0"].split(",")}
    old = qemu(dom_name("cl"))
    assert old.hugetlb_kib == 128 * 1024
    assert old.vcpus[0].affinity == planned

    assert kvmctl("snapshot", "create", str(cockpit), "cl", "hp1").returncode == 0
    assert kvmctl("snapshot", "revert", str(cockpit), "cl", "hp1").returncode == 0

    new = qemu(dom_name("cl"))
    assert new.pid != old.pid  # libvirt restarts QEMU on a revert
    assert new.hugetlb_kib == 128 * 1024
    assert [t.affinity for t in new.vcpus] == [t.affinity for t in old.vcpus]
    assert new.vcpus[0].affinity == planned
    emulator = {int(c) for c in plan["emulator"].split(",")}
    assert new.emulator and all(t.affinity == emulator for t in new.emulator)
    status = {r["vm"]: r for r in kvmctl_json("status", str(cockpit))["vms"]}["cl"]
    assert status["hugepages_actual_kib"] == 128 * 1024 and status["drift"] == []
    assert guests.counter("cl")[0] > 0
    assert kvmctl("snapshot", "delete", str(cockpit), "cl", "hp1").returncode == 0


# --------------------------------------------------------------------------- the set


def test_group_snapshot_is_one_instant_and_revert_follows_depends_on(
    cockpit: Path, guests: Guests
) -> None:
    for vm in VMS:
        guests.start_counter(vm)
    time.sleep(1.0)
    offsets_before = {vm: guests.clock_offset(vm) for vm in VMS}
    before = {vm: guests.counter(vm) for vm in VMS}
    made = kvmctl_json("snapshot", "create", "--all", str(cockpit), "g1")
    after = {vm: guests.counter(vm) for vm in VMS}

    assert made["frozen"] is True and made["disk_only"] is False
    assert set(made["members"]) == set(VMS)
    members = made["members"]
    first_pause = min(m["pause_requested_at"] for m in members.values())
    last_pause = max(m["paused_at"] for m in members.values())
    first_resume = min(m["resumed_at"] for m in members.values())
    # Every VM was paused before any resumed: the members share one instant.
    assert last_pause <= first_resume
    assert made["instant"] == pytest.approx(last_pause)
    assert made["pause_window_ms"] >= made["pause_spread_ms"] > 0
    assert Path(made["manifest_path"]).is_file()

    time.sleep(1.5)
    for vm in VMS:
        guests.sh(vm, "echo later >/data/after-g1 && sync")
    live = {vm: guests.counter(vm) for vm in VMS}
    old_pids = pids()

    reverted = kvmctl_json("snapshot", "revert", "--all", str(cockpit), "g1")
    out = reverted["vms"]
    assert reverted["levels"] == [["cl", "ivi", "pas"], ["hud"]]
    # hud depends on cl: resumed only once cl was ready again
    assert out["hud"]["resumed_at"] >= out["cl"]["ready_at"]
    assert all(o["thawed"] and o["thawed"] >= 1 for o in out.values())  # frozen in the snapshot

    captured = {}
    for vm in VMS:
        assert_restored(guests, vm, before[vm], after[vm], live[vm], out[vm]["resumed_at"])
        assert not guests.exists(vm, "/data/after-g1")
        offset_after, rtt_after = guests.clock_offset(vm)
        offset_before, rtt_before = offsets_before[vm]
        # host time at which this VM's restored state was captured
        captured[vm] = out[vm]["resumed_at"] - offset_after + offset_before
        tolerance = 0.05 + (rtt_before + rtt_after) / 2  # loaded CI hosts deschedule us
        assert first_pause - tolerance <= captured[vm] <= last_pause + tolerance, (
            vm,
            captured[vm] - first_pause,
            last_pause - first_pause,
            tolerance,
        )
    spread = max(captured.values()) - min(captured.values())
    assert spread <= made["pause_spread_ms"] / 1000 + 0.08, (spread, made["pause_spread_ms"])
    print(
        f"\ngroup g1: pause window {made['pause_window_ms']:.0f} ms, members' instants within "
        f"{spread * 1000:.1f} ms (pause spread {made['pause_spread_ms']:.1f} ms)"
    )

    assert all(pid != old_pids[vm] for vm, pid in pids().items())
    assert all(guests.state(vm) == libvirt.VIR_DOMAIN_RUNNING for vm in VMS)
    groups = {g["name"]: g for g in snapshots(cockpit)["groups"]}
    assert groups["g1"]["complete"] and groups["g1"]["members"] == list(VMS)


def test_status_summary_api(cockpit: Path) -> None:
    """What `kvmctl status` can show: per VM count and newest snapshot, and
    the set's newest complete group."""
    from kvmctl import cockpit as api
    from kvmctl import snapshot

    session = api.open_session(cockpit, URI)
    assert session.virt is not None
    summary = snapshot.snapshot_summary(session.virt, session.plan)
    assert set(summary) == set(VMS)
    assert summary["ivi"]["count"] == 2 and {summary[vm]["latest"] for vm in VMS} == {"g1"}
    assert summary["hud"] == {
        "count": 1,
        "latest": "g1",
        "latest_created": summary["hud"]["latest_created"],
        "latest_group": "g1",
    }
    assert snapshot.latest_group(session.virt, session.plan) == "g1"


def test_disk_only_group_snapshot_revert_and_delete(cockpit: Path, guests: Guests) -> None:
    spec = str(cockpit)
    before = {vm: guests.counter(vm) for vm in VMS}
    made = kvmctl_json("snapshot", "create", "--all", spec, "gdisk", "--disk-only")
    after = {vm: guests.counter(vm) for vm in VMS}
    assert made["disk_only"] is True and set(made["members"]) == set(VMS)
    rows = [s for s in snapshots(cockpit)["snapshots"] if s["name"] == "gdisk"]
    assert {r["vm"] for r in rows} == set(VMS) and all(r["kind"] == "external" for r in rows)
    overlays = [Path(o["file"]) for r in rows for o in r["overlays"]]
    assert len(overlays) == 4 and all(p.is_file() and p.parent == POOL_DIR for p in overlays)
    token = secrets.token_hex(8)
    for vm in VMS:
        guests.sh(vm, 'echo "$1" >/data/after-gdisk && sync', token)

    # A disk-only snapshot has no memory: the VMs boot again from their disks
    # as they were at the instant (file systems frozen then, so consistent).
    reverted = kvmctl_json("snapshot", "revert", "--all", spec, "gdisk")
    assert reverted["levels"] == [["cl", "ivi", "pas"], ["hud"]]
    out = reverted["vms"]
    assert all(o["kind"] == "disk" and o["ready_at"] for o in out.values())
    assert out["hud"]["resumed_at"] >= out["cl"]["ready_at"]
    for vm in VMS:
        assert not guests.exists(vm, "/data/after-gdisk")
        on_disk = int(guests.sh(vm, "cat /data/counter"))
        # the file as it was when the file systems were frozen for the snapshot
        assert before[vm][1] <= on_disk <= after[vm][1], (vm, before[vm], on_disk, after[vm])
        # a fresh boot: no counter in memory
        assert guests.sh(vm, "kvmctl-tool counter read").split()[0] == "memory=none"
        guests.sh(vm, 'echo "$1" >/data/after-gdisk && sync', token)
    assert all(p.is_file() for p in overlays)  # the overlays started afresh

    gone = kvmctl_json("snapshot", "delete", "--all", spec, "gdisk")
    assert set(gone["deleted"]) == set(VMS) and gone["skipped"] == {}
    assert not any(p.exists() for p in overlays)
    assert not (Path(os.environ["KVMCTL_SNAPSHOT_DIR"]) / SET / "gdisk.json").exists()
    for vm in VMS:
        assert guests.sh(vm, "cat /data/after-gdisk").strip() == token
        assert "gdisk" not in guests.dom(vm).XMLDesc(0)


# --------------------------------------------------------------------------- disk-only


def test_deleting_disk_only_snapshots_keeps_later_data(cockpit: Path, guests: Guests) -> None:
    spec = str(cockpit)
    token_a, token_b = secrets.token_hex(8), secrets.token_hex(8)
    e1 = kvmctl_json("snapshot", "create", spec, "pas", "e1", "--disk-only")
    assert e1["kind"] == "external" and e1["frozen"] is True
    overlay1 = Path(e1["overlays"][0])
    assert overlay1.parent == POOL_DIR and overlay1.is_file()
    guests.sh("pas", 'echo "$1" >/data/a.txt && sync', token_a)
    e2 = kvmctl_json("snapshot", "create", spec, "pas", "e2", "--disk-only")
    overlay2 = Path(e2["overlays"][0])
    guests.sh("pas", 'echo "$1" >/data/b.txt && sync', token_b)

    run = kvmctl("snapshot", "revert", spec, "pas", "e1")
    assert run.returncode == 2 and "not its newest disk-only snapshot (e2)" in run.stderr
    rows = {s["name"]: s for s in snapshots(cockpit, "pas")["snapshots"]}
    assert rows["e1"]["kind"] == rows["e2"]["kind"] == "external"
    assert rows["e2"]["parent"] == "e1" and not rows["e1"]["memory"]
    assert rows["e2"]["size_bytes"] is not None

    # e1 is below e2: a plain commit; e2 is what the guest writes to: active commit + pivot
    assert kvmctl("snapshot", "delete", spec, "pas", "e1").returncode == 0
    assert not overlay1.exists() and overlay2.is_file()
    guests.sh("pas", 'echo "$1" >/data/c.txt', token_a + token_b)  # while merging state changes
    assert kvmctl("snapshot", "delete", spec, "pas", "e2").returncode == 0
    assert not overlay2.exists()
    xml = guests.dom("pas").XMLDesc(0)
    assert f"volume='{SET}-pas-data.qcow2'" in xml and ".e2.qcow2" not in xml
    assert {s["name"] for s in snapshots(cockpit, "pas")["snapshots"]} == {"g1"}

    def read_back() -> None:
        assert guests.sh("pas", "cat /data/a.txt").strip() == token_a
        assert guests.sh("pas", "cat /data/b.txt").strip() == token_b
        assert guests.sh("pas", "cat /data/c.txt").strip() == token_a + token_b

    read_back()
    # From the disk, not the guest's page cache: power off, start again, read.
    guests.sh("pas", "sync")
    guests.dom("pas").destroy()
    started = kvmctl_json("apply", spec)
    assert started["vms"]["pas"]["action"] == "start"
    read_back()
    guests.start_counter("pas")


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_and_changes_nothing(
    cockpit: Path, specs: dict[str, Path], guests: Guests
) -> None:
    spec = str(cockpit)
    assert kvmctl("snapshot", "create", spec, "hud", "dup").returncode == 0
    state_before = snapshots(cockpit)
    pids_before = pids()
    pwned = Path(f"/tmp/{SET}-pwned")
    cases = [
        (("create", spec, "nope", "s"), "no VM 'nope'"),
        (("create", spec, "hud", "dup"), "already has a snapshot named 'dup'"),
        (("revert", spec, "hud", "nope"), "has no snapshot 'nope'"),
        (("delete", spec, "hud", "nope"), "has no snapshot 'nope'"),
        (("create", spec, "hud", "x<y>"), "may only contain"),
        (("create", spec, "hud", "a&b"), "may only contain"),
        (("create", spec, "hud", "q'uote"), "may only contain"),
        (("create", spec, "hud", f"$(touch {pwned})"), "may only contain"),
        (("create", spec, "hud", "a b"), "may only contain"),
        (("create", spec, "hud", "../../etc/x"), "may only contain"),
        (("create", "--all", spec, "<g>"), "may only contain"),
        (("revert", "--all", spec, "nope"), "no group snapshot 'nope'"),
        (("delete", "--all", spec, "nope"), "no group snapshot 'nope'"),
        (("create", "--all", spec, "hud", "g9"), "with --all give only the group name"),
        (("revert", spec, "hud"), "give the VM and the snapshot name"),
        (("delete", spec, "hud", "g1"), "belongs to group snapshot 'g1'"),
        # The spec changed since the snapshot: revert needs --force.
        (("revert", "--all", str(specs["changed"]), "g1"), "--force"),
        (("revert", str(specs["changed"]), "ivi", "s1"), "--force"),
    ]
    for args, expected in cases:
        run = kvmctl("snapshot", *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert expected in run.stderr, (args, run.stderr)
        assert run.stderr.startswith("kvmctl: ") and run.stderr.count("\n") <= 2, run.stderr
    assert not pwned.exists()
    assert snapshots(cockpit) == state_before
    assert pids() == pids_before
    assert all(guests.state(vm) == libvirt.VIR_DOMAIN_RUNNING for vm in VMS)
    assert kvmctl("snapshot", "delete", spec, "hud", "dup").returncode == 0

    # --force reverts anyway and says what it did
    forced = kvmctl("snapshot", "revert", str(specs["changed"]), "ivi", "s1", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "spec changed since snapshot 's1'" in forced.stdout and "kvmctl apply" in forced.stdout
    assert guests.state("ivi") == libvirt.VIR_DOMAIN_RUNNING


def test_group_revert_with_a_destroyed_member_changes_nothing(
    cockpit: Path, specs: dict[str, Path], guests: Guests
) -> None:
    spec, reduced = str(cockpit), str(specs["reduced"])
    assert kvmctl("snapshot", "create", "--all", spec, "gd").returncode == 0
    removed = kvmctl_json("apply", reduced)  # pas goes, with its snapshots
    assert removed["vms"]["pas"]["action"] == "delete"
    left = ("cl", "hud", "ivi")
    pids_before = pids(left)
    listing = snapshots(cockpit)

    run = kvmctl("snapshot", "revert", "--all", spec, "gd")
    assert run.returncode == 2, run.stderr
    assert "VM 'pas'" in run.stderr and "no longer exists" in run.stderr
    assert "nothing was changed" in run.stderr
    run = kvmctl("snapshot", "revert", "--all", reduced, "gd")
    assert run.returncode == 2 and "pas" in run.stderr, run.stderr

    assert pids(left) == pids_before
    assert all(guests.state(vm) == libvirt.VIR_DOMAIN_RUNNING for vm in left)
    assert snapshots(cockpit) == listing
    groups = {g["name"]: g for g in listing["groups"]}
    assert groups["gd"]["complete"] is False and groups["gd"]["present"] == list(left)

    # delete --all removes what is left and says what it skipped
    gone = kvmctl_json("snapshot", "delete", "--all", reduced, "gd")
    assert set(gone["deleted"]) == set(left) and gone["skipped"] == {"pas": "domain gone"}
    assert "gd" not in {g["name"] for g in snapshots(specs["reduced"])["groups"]}


def test_freeze_failure_thaws_the_others_and_takes_nothing(
    cockpit: Path, specs: dict[str, Path], guests: Guests
) -> None:
    reduced = specs["reduced"]
    # ivi's agent goes away: its freeze fails after cl's and hud's succeeded
    # (or while they are under way); they must be thawed again.
    try:
        guests.sh("ivi", 'kill "$(cat /run/qemu-ga.pid)"', timeout=5)
    except (AssertionError, libvirt.libvirtError):
        pass  # the agent may die before it reports back
    run = kvmctl("snapshot", "create", "--all", str(reduced), "gf")
    assert run.returncode == 1 and "freeze of VM 'ivi' failed" in run.stderr, run.stderr
    for vm in ("cl", "hud"):
        assert guests.state(vm) == libvirt.VIR_DOMAIN_RUNNING
        guests.sh(vm, "echo ok >/data/after-freeze-failure && sync", timeout=20)
    listing = snapshots(reduced)
    assert [s for s in listing["snapshots"] if s["name"] == "gf"] == []
    # ivi gets its agent back by a power cycle through kvmctl
    guests.dom("ivi").destroy()
    assert kvmctl_json("apply", str(reduced))["vms"]["ivi"]["action"] == "start"


def test_member_killed_during_group_snapshot_leaves_the_set_running(
    cockpit: Path, specs: dict[str, Path], guests: Guests
) -> None:
    reduced = specs["reduced"]
    victim = dom_name("ivi")
    survivors = ("cl", "hud")
    proc = kvmctl_popen(
        "snapshot",
        "create",
        "--all",
        str(reduced),
        "gk",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed = False
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if guests.state("ivi") == libvirt.VIR_DOMAIN_PAUSED:
                pid = int(Path(f"/run/libvirt/qemu/{victim}.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed, "the group snapshot finished before ivi was seen paused"
    assert proc.returncode == 1, (out, err)
    assert "rolled back" in err and "Traceback" not in err, err

    for vm in survivors:
        assert guests.state(vm) == libvirt.VIR_DOMAIN_RUNNING, vm  # not left paused
        # not left frozen: a write to /data completes
        guests.sh(vm, "echo ok >/data/after-kill && sync", timeout=20)
    assert guests.state("ivi") == libvirt.VIR_DOMAIN_SHUTOFF
    listing = snapshots(reduced)
    assert [s for s in listing["snapshots"] if s["name"] == "gk"] == []
    assert "gk" not in {g["name"] for g in listing["groups"]}
    assert not (specs["manifests"] / SET / "gk.json").exists()

    # Left for the finalizer: destroy must also remove a disk-only snapshot's overlay.
    made = kvmctl_json("snapshot", "create", str(reduced), "cl", "for-destroy", "--disk-only")
    assert Path(made["overlays"][0]).is_file()
