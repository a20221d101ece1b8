"""Channels on real libvirt and QEMU (TCG): bytes written into a shared region
by one member are read by the other and are the bytes of the host's backing
file, which no other host user can read; a non-member has no such device; two
sets with the same channel name do not share; destroy leaves nothing in
/dev/shm; a serial channel carries bytes both ways; `ro` and vsock (without
/dev/vhost-vsock) are refused before anything is created; `status` shows the
channels. Lifecycle (docs/channels.md): the region's contents outlive a
member's restart by the supervisor and a stop of every member; a memory
snapshot and a migration of a member are refused before anything changes.

In the guest the region is the BAR2 of PCI device 1af4:1110 (ivshmem); the
test guest's busybox `devmem` reads and writes it through /dev/mem.
"""

from __future__ import annotations

import json
import secrets
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmctl.planner.channels import IVSHMEM_BLOCKER
from kvmctl.testing.lab import LabState
from tests.integration.cockpit_helpers import (
    URI,
    kvmctl,
    libvirt_objects,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.ops_helpers import (
    SupervisorProcess,
    applied_set,
    domain_state,
    guest_run,
    kill_qemu,
    qemu_pid,
    wait_until,
)

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(2)
SET = f"kvt-ch-{TOKEN}"
OTHER = f"kvt-ch2-{TOKEN}"
SHM = Path("/dev/shm")
VM = "{memory: {size: 128MiB}, disk: {size: 32MiB}, ready: {probe: agent, timeout: 120s}}"
SPEC = f"""
name: {SET}
host: {{housekeeping_cpus: [{worker_housekeeping_cpu()}]}}
vms:
  a: {VM}
  b: {VM}
  c: {VM}
channels:
  - {{kind: shm, name: vehicle, size: 1MiB, members: [a, b]}}
  - {{kind: serial, name: hb, vm: c}}
"""
# Another set whose region has the same channel name.
OTHER_SPEC = f"""
name: {OTHER}
vms:
  x: {VM}
  y: {VM}
channels:
  - {{kind: shm, name: vehicle, size: 1MiB, members: [x, y]}}
"""

# BAR2 of the ivshmem device (third line of its PCI resource file), or nothing.
FIND_BAR = """
for d in /sys/bus/pci/devices/*; do
  if [ "$(cat "$d/vendor")" = 0x1af4 ] && [ "$(cat "$d/device")" = 0x1110 ]; then
    sed -n 3p "$d/resource" | cut -d' ' -f1
  fi
done
"""
# The device node of a named virtio-serial port (no udev in the test guest).
FIND_PORT = """
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name")" = "$1" ] && echo "/dev/${p##*/}"
done
"""


def region_files(set_name: str) -> list[str]:
    return sorted(p.name for p in SHM.glob(f"kvmctl.{set_name}.*"))


def remove_leftovers(set_name: str) -> list[str]:
    """Last resort, so a failing run leaves the host clean: what was left."""
    left = region_files(set_name)
    for name in left:
        (SHM / name).unlink(missing_ok=True)
    return left


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        with applied_set(tmp_path_factory.mktemp("ch"), SET, SPEC) as path:
            yield path
    finally:
        remove_leftovers(SET)


def domain(vm: str, set_name: str = SET) -> str:
    return f"{set_name}-{vm}"


def bar(vm: str, set_name: str = SET) -> str:
    return guest_run(domain(vm, set_name), "/bin/sh", "-c", FIND_BAR).strip()


def devmem(vm: str, address: str, value: int | None = None, set_name: str = SET) -> int:
    """Read (or write, then read back) one 32-bit word of the region in the guest."""
    dom = domain(vm, set_name)
    if value is not None:
        guest_run(dom, "/bin/busybox", "devmem", address, "32", hex(value))
    return int(guest_run(dom, "/bin/busybox", "devmem", address, "32").strip(), 16)


def host_word(set_name: str = SET, channel: str = "vehicle") -> int:
    with open(SHM / f"kvmctl.{set_name}.{channel}", "rb") as f:
        return int.from_bytes(f.read(4), "little")


def live_xml(dom: str) -> str:
    conn = libvirt.open(URI)
    try:
        return str(conn.lookupByName(dom).XMLDesc(0))
    finally:
        conn.close()


def test_bytes_written_by_one_member_are_read_by_the_other(applied: Path) -> None:
    address = bar("a")
    assert address.startswith("0x"), f"no ivshmem device in a: {address!r}"
    value = secrets.randbits(32) | 1
    assert devmem("a", address, value) == value
    assert devmem("b", bar("b")) == value
    assert host_word() == value
    # And back: the reader writes, the writer sees it.
    answer = value ^ 0xFFFF_FFFF
    devmem("b", bar("b"), answer)
    assert devmem("a", address) == answer == host_word()


def test_the_backing_file_is_private_to_qemu(applied: Path) -> None:
    path = SHM / f"kvmctl.{SET}.vehicle"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, oct(st.st_mode)
    pid = qemu_pid(domain("a"))
    assert pid is not None
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert st.st_uid == uid
    # Another user of the host (nobody) cannot read it.
    probe = subprocess.run(
        ["/bin/cat", str(path)], user=65534, capture_output=True, timeout=30, check=False
    )
    assert probe.returncode != 0 and b"Permission denied" in probe.stderr, probe.stderr


def test_a_vm_that_is_not_a_member_has_no_device(applied: Path) -> None:
    assert "<shmem" in live_xml(domain("a"))
    assert "<shmem" not in live_xml(domain("c"))
    assert bar("c") == ""


def test_plan_shows_the_channels_and_their_members(applied: Path) -> None:
    run = kvmctl("plan", str(applied))
    assert run.returncode == 0, run.stderr
    assert (
        f"channel vehicle: shm 1MiB at /dev/shm/kvmctl.{SET}.vehicle, members a (rw), b (rw)"
        in run.stdout
    )
    assert "channel hb: serial" in run.stdout


def test_audit_checks_the_declared_devices(applied: Path) -> None:
    run = kvmctl("audit", str(applied), "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    items = {(c["vm"], c["item"]): c["ok"] for c in json.loads(run.stdout)["checks"]}
    assert items[("a", "shmem vehicle")] and items[("b", "shmem vehicle")]
    assert items[("c", "serial hb")]


def test_two_sets_with_the_same_channel_name_do_not_share(applied: Path, tmp_path: Path) -> None:
    try:
        with applied_set(tmp_path, OTHER, OTHER_SPEC):
            assert region_files(SET) == [f"kvmctl.{SET}.vehicle"]
            assert region_files(OTHER) == [f"kvmctl.{OTHER}.vehicle"]
            mine = devmem("a", bar("a"), 0x1111_1111)
            theirs = devmem("x", bar("x", OTHER), 0x2222_2222, set_name=OTHER)
            assert devmem("y", bar("y", OTHER), set_name=OTHER) == theirs
            assert devmem("b", bar("b")) == mine
            assert (host_word(), host_word(OTHER)) == (mine, theirs)
    finally:
        left = remove_leftovers(OTHER)
    assert left == [], "destroy left region files in /dev/shm"


def test_serial_channel_carries_bytes_both_ways(applied: Path) -> None:
    from kvmctl.state.paths import channel_dir

    sock_path = channel_dir() / f"{SET}.c.hb.sock"
    dom = domain("c")
    port = guest_run(dom, "/bin/sh", "-c", FIND_PORT, "sh", "org.kvmctl.hb").strip()
    assert port.startswith("/dev/vport"), port
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as host:
        host.settimeout(30)
        host.connect(str(sock_path))
        guest_run(dom, "/bin/sh", "-c", 'printf from-guest > "$1"', "sh", port)
        got = b""
        while len(got) < len(b"from-guest"):
            got += host.recv(64)
        assert got == b"from-guest"
        guest_run(dom, "/bin/sh", "-c", 'head -c 9 "$1" > /tmp/got', "sh", port, wait=False)
        time.sleep(1)  # the reader opens the port
        host.sendall(b"from-host")

        def received() -> str:
            out = guest_run(dom, "/bin/cat", "/tmp/got")
            return out if len(out) >= len("from-host") else ""

        assert wait_until(received, 30, "the guest to read the port") == "from-host"


def test_ro_and_vsock_are_refused_before_anything_is_created(tmp_path: Path) -> None:
    prefix = f"kvt-chr-{TOKEN}"
    ro = write_spec(
        tmp_path,
        f"name: {prefix}\nvms:\n  a: {VM}\n  b: {VM}\nchannels:\n"
        "  - {kind: shm, name: v, size: 1MiB, members: [a, {vm: b, access: ro}]}\n",
        "ro.yaml",
    )
    run = kvmctl("apply", str(ro))
    assert run.returncode == 2, run.stderr
    assert "channels[0].members[1].access: 'ro' cannot be enforced" in run.stderr
    if Path("/dev/vhost-vsock").exists():
        pytest.skip("this host has /dev/vhost-vsock: vsock is not refused here")
    vsock = write_spec(
        tmp_path,
        f"name: {prefix}\nvms:\n  a: {VM}\nchannels:\n  - {{kind: vsock, name: ctl, vm: a}}\n",
        "vsock.yaml",
    )
    run = kvmctl("apply", str(vsock))
    assert run.returncode == 3, run.stderr
    assert "/dev/vhost-vsock" in run.stderr and "kind: serial" in run.stderr
    assert libvirt_objects(prefix) == {"domains": [], "volumes": []}
    assert region_files(prefix) == []


def test_status_shows_the_channels_and_what_each_member_carries(applied: Path) -> None:
    run = kvmctl("status", str(applied), "--json")
    assert run.returncode == 0, run.stderr
    channels = {c["channel"]: c for c in json.loads(run.stdout)["channels"]}
    assert channels["vehicle"]["kind"] == "shm"
    assert channels["vehicle"]["host_end"] == f"/dev/shm/kvmctl.{SET}.vehicle"
    assert channels["vehicle"]["members"] == [
        {"vm": "a", "access": "rw", "carried": True},
        {"vm": "b", "access": "rw", "carried": True},
    ]
    assert channels["hb"]["kind"] == "serial"
    assert channels["hb"]["host_end"].endswith(f"/{SET}.c.hb.sock")
    assert channels["hb"]["members"] == [{"vm": "c", "access": "rw", "carried": True}]
    text = kvmctl("status", str(applied))
    assert "a (rw, carried), b (rw, carried)" in text.stdout, text.stdout


def test_a_member_restarted_by_the_supervisor_reads_what_was_written_before(
    applied: Path, tmp_path: Path
) -> None:
    value = devmem("a", bar("a"), secrets.randbits(32) | 1)
    sup = SupervisorProcess(applied, tmp_path)
    try:
        sup.wait(60, event="observed", vm="a")
        mark = sup.mark()
        old = kill_qemu(domain("a"))
        restarted = sup.wait(240, since=mark, event="restarted", vm="a")
        assert restarted["pid"] not in (None, old)
    finally:
        sup.terminate()
    assert devmem("a", bar("a")) == value == host_word()
    assert devmem("b", bar("b")) == value


def _start_all(spec: Path) -> None:
    run = kvmctl("apply", str(spec), timeout=300)
    assert run.returncode == 0, run.stderr


def test_the_region_keeps_its_contents_while_every_member_is_stopped(applied: Path) -> None:
    value = devmem("a", bar("a"), secrets.randbits(32) | 1)
    conn = libvirt.open(URI)
    try:
        for vm in ("a", "b"):
            conn.lookupByName(domain(vm)).destroy()
    finally:
        conn.close()
    assert (domain_state(domain("a")), domain_state(domain("b"))) == ("shut off", "shut off")
    assert region_files(SET) == [f"kvmctl.{SET}.vehicle"]
    assert host_word() == value
    _start_all(applied)
    assert devmem("b", bar("b")) == value
    assert devmem("a", bar("a")) == value


def test_a_memory_snapshot_of_a_member_is_refused_and_nothing_is_created(applied: Path) -> None:
    run = kvmctl("snapshot", "create", str(applied), "a", "kvt-mem")
    assert run.returncode == 2, run.stderr
    assert "VM 'a' is a member of shared region 'vehicle'" in run.stderr
    assert IVSHMEM_BLOCKER in run.stderr and "--disk-only" in run.stderr
    conn = libvirt.open(URI)
    try:
        assert conn.lookupByName(domain("a")).listAllSnapshots(0) == []
    finally:
        conn.close()
    assert domain_state(domain("a")) == "running"
    # The way the refusal names works.
    disk = kvmctl("snapshot", "create", str(applied), "a", "kvt-disk", "--disk-only", timeout=180)
    assert disk.returncode == 0, disk.stderr
    gone = kvmctl("snapshot", "delete", str(applied), "a", "kvt-disk", timeout=180)
    assert gone.returncode == 0, gone.stderr


def test_a_member_cannot_migrate_and_neither_host_changes(
    applied: Path, kvmctl_lab: LabState
) -> None:
    pid = qemu_pid(domain("a"))
    run = kvmctl(
        "migrate", str(applied), "a", "--to", kvmctl_lab.uri, "--insecure", "--copy-storage"
    )
    assert run.returncode == 3, run.stderr
    assert "VM 'a' is a member of shared region 'vehicle'" in run.stderr
    assert IVSHMEM_BLOCKER in run.stderr
    assert qemu_pid(domain("a")) == pid and domain_state(domain("a")) == "running"
    conn = libvirt.open(kvmctl_lab.uri)
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith(SET)] == []
    finally:
        conn.close()


def test_destroy_leaves_no_backing_files(applied: Path) -> None:
    """Last in the module: it destroys the set the tests above share."""
    assert region_files(SET) == [f"kvmctl.{SET}.vehicle"]
    run = kvmctl("destroy", str(applied), timeout=180)
    assert run.returncode == 0, run.stderr
    assert region_files(SET) == []
    assert libvirt_objects(SET) == {"domains": [], "volumes": []}
