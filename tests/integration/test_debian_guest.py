"""A real operating system through kvmctl: the Debian 12 guest image (systemd,
cloud-init, the guest agent as a service) applied as `image: {builtin:
debian-12}`, ready by the cloud-init probe (the agent answers, then cloud-init
says done), set up by cloud-init from the spec (a user, a file, a systemd unit
that ran, the planned address on the NIC by MAC, a /data in fstab), reached
from a test guest on its bridge, sharing a memory region with it, restarted,
snapshotted and reverted, refused a --copy-storage migration of its overlay,
restarted by the supervisor after a kill -9 without cloud-init running again,
and destroyed without a trace. Checked inside the guests, through their agents.

One applied set and one Debian boot serve every test (a boot takes minutes
under TCG); the tests run in file order, the ones that restart or remove the
guest last."""

from __future__ import annotations

import ipaddress
import json
import queue
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.host import images
from kvmctl.testing.lab import LabState
from tests.integration.cockpit_helpers import kvmctl, kvmctl_json, worker_housekeeping_cpu
from tests.integration.conftest import token
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

TOKEN = token(2)
SET = f"kvt-deb-{TOKEN}"
BRIDGE = f"kvt{TOKEN}deb"
SUBNET = ipaddress.IPv4Network(f"10.79.{int(TOKEN, 16) % 250}.0/24")
ADDRESS = SUBNET.network_address + 20
PEER_ADDRESS = SUBNET.network_address + 21
SPEC = f"""
name: {SET}
host: {{housekeeping_cpus: [{worker_housekeeping_cpu()}]}}
networks:
  media: {{bridge: {BRIDGE}, subnet: {SUBNET}, isolated: true}}
vms:
  ivi:
    memory: {{size: 768MiB}}
    disk: {{size: 2GiB}}
    networks: [{{name: media, address: {ADDRESS}}}]
    ready: {{probe: cloud-init, timeout: 900s}}
    restart: {{policy: always, max: 3, window: 600s}}
    image:
      builtin: debian-12
      cloud_init:
        user_data:
          users:
            - {{name: driver, shell: /bin/bash}}
          write_files:
            - path: /etc/ivi/welcome.txt
              content: "media head unit ready {TOKEN}\\n"
            - path: /etc/systemd/system/ivi-media.service
              content: |
                [Unit]
                Description=Infotainment media service
                [Service]
                Type=oneshot
                RemainAfterExit=yes
                ExecStart=/bin/sh -c 'cat /etc/ivi/welcome.txt > /run/ivi-media.state'
                [Install]
                WantedBy=multi-user.target
            - path: /etc/fstab
              append: true
              content: "/var/lib/ivi/data.img /data ext4 loop,nofail 0 2\\n"
          runcmd:
            - [systemctl, daemon-reload]
            - [systemctl, enable, --now, ivi-media.service]
            - [mkdir, -p, /var/lib/ivi, /data]
            - [truncate, -s, 64M, /var/lib/ivi/data.img]
            - [mkfs.ext4, -q, /var/lib/ivi/data.img]
            - [mount, /data]
            - [sh, -c, "echo ran >>/var/lib/ivi/runcmd.log"]
  peer:
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    image: {{builtin: test-guest}}
    networks: [{{name: media, address: {PEER_ADDRESS}}}]
    ready: {{probe: agent, timeout: 120s}}
"""
CHANNEL = """
channels:
  - {kind: shm, name: media-meta, size: 1MiB, members: [ivi, peer]}
"""
DOMAIN = f"{SET}-ivi"
PEER = f"{SET}-peer"


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    images.disk_image("debian-12")  # built by `make images`; says so when it is not
    # A busy 2-core host may take most of the probe's 900 s to boot it.
    with applied_set(tmp_path_factory.mktemp("deb"), SET, SPEC + CHANNEL, timeout=1000) as path:
        yield path


def sh(command: str, timeout: float = 60, domain: str = DOMAIN) -> str:
    return guest_run(domain, "/bin/sh", "-c", command, timeout=timeout)


def answers() -> bool:
    """The agent in the Debian guest runs commands again."""
    try:
        return sh("true", timeout=10) == ""
    except Exception:  # noqa: BLE001 - not up yet, in whatever way
        return False


def boot_id() -> str:
    return sh("cat /proc/sys/kernel/random/boot_id").strip()


def test_ready_means_cloud_init_done_and_systemd_running(applied: Path) -> None:
    # apply returned only once the agent (a systemd service in the guest)
    # answered and cloud-init said done: no waiting needed here
    assert "status: done" in sh("cloud-init status")
    assert sh("cat /etc/os-release").count('VERSION_ID="12"') == 1
    state = sh("systemctl is-system-running --wait || true", timeout=300).strip()
    assert state in ("running", "degraded"), state
    failed = sh("systemctl --failed --no-legend --plain | cut -d' ' -f1").split()
    assert failed == [], failed


def test_cloud_init_ran_the_spec(applied: Path) -> None:
    status = sh("cloud-init status --long || true")
    assert "status: done" in status, status
    assert "nocloud" in status.lower(), status
    assert sh("cat /etc/ivi/welcome.txt").strip() == f"media head unit ready {TOKEN}"
    assert sh("id -un driver").strip() == "driver"
    assert sh("systemctl is-active ivi-media.service").strip() == "active"
    assert sh("cat /run/ivi-media.state").strip() == f"media head unit ready {TOKEN}"


def test_planned_address_on_the_nic_matched_by_mac(applied: Path) -> None:
    addresses = json.loads(sh("ip -j -4 addr show"))
    found = {a["local"] for link in addresses for a in link.get("addr_info", [])}
    assert str(ADDRESS) in found, found


def test_static_address_is_reachable_from_a_test_guest_on_the_bridge(applied: Path) -> None:
    out = guest_run(PEER, "/usr/bin/kvmctl-tool", "ping", str(ADDRESS), "3", timeout=60)
    assert " 0% packet loss" in out, out


def test_shm_region_carries_bytes_both_ways_through_the_toolbox(applied: Path) -> None:
    """The toolbox in each guest finds the region as the BAR of the ivshmem
    device (its PCI resource file) and reads what the other one wrote."""
    for domain in (DOMAIN, PEER):
        listed = guest_run(domain, "/usr/bin/kvmctl-tool", "shm", "list").splitlines()
        assert len(listed) == 1 and listed[0].startswith("index=0 "), (domain, listed)
        assert listed[0].endswith(" size=1048576"), (domain, listed)
    for writer, reader in ((DOMAIN, PEER), (PEER, DOMAIN)):
        text = f"from {writer} {secrets.token_hex(4)}"
        guest_run(writer, "/usr/bin/kvmctl-tool", "shm", "write", text, timeout=60)
        assert guest_run(reader, "/usr/bin/kvmctl-tool", "shm", "read", timeout=60).strip() == text


def test_data_mount_from_fstab_survives_a_restart(applied: Path) -> None:
    """The restart is the one that taking the channel out of the spec asks
    for (a memory snapshot of a channel member is refused): a clean shutdown
    and a fresh boot of the guest, in which systemd mounts /data from fstab
    and cloud-init, the same instance, runs none of its per-instance steps."""
    before = boot_id()
    sh(f"echo kept {TOKEN} >/data/kept.txt && sync")
    applied.write_text(SPEC)
    result = kvmctl("apply", str(applied), timeout=1000)
    assert result.returncode == 0, result.stderr
    wait_until(answers, 300, "the agent after the restart", step=2)
    assert boot_id() != before
    assert sh("findmnt -s -n -o TARGET /data").strip() == "/data"  # in fstab
    assert sh("systemctl is-active data.mount || true").strip() == "active"
    assert sh("cat /data/kept.txt").strip() == f"kept {TOKEN}"
    assert sh("cat /var/lib/ivi/runcmd.log").split() == ["ran"]


def test_memory_snapshot_revert_restores_a_file(applied: Path) -> None:
    sh("echo before >/root/state.txt && sync")
    created = kvmctl_json("snapshot", "create", str(applied), "ivi", "s1")
    assert created["memory"] is True
    sh("echo after >/root/state.txt && sync")
    kvmctl_json("snapshot", "revert", str(applied), "ivi", "s1")
    wait_until(answers, 120, "the agent after the revert", step=1)
    assert sh("cat /root/state.txt").strip() == "before"
    assert kvmctl("snapshot", "delete", str(applied), "ivi", "s1").returncode == 0


def test_copy_storage_of_the_overlay_is_refused_before_anything_moves(
    applied: Path, kvmctl_lab: LabState
) -> None:
    """kvmctl does not copy images: the overlay on the debian-12 image is
    refused with a sentence naming both, and nothing changes on either host."""
    image = str(images.disk_image("debian-12").path)
    run = kvmctl(
        "migrate",
        str(applied),
        "ivi",
        "--to",
        kvmctl_lab.uri,
        "--copy-storage",
        "--insecure",
        timeout=180,
    )
    assert run.returncode == 3, run.stderr
    assert f"is an overlay on the image {image}, which kvmctl does not copy" in run.stderr
    assert domain_state(DOMAIN) == "running"
    conn = libvirt.open(kvmctl_lab.uri)
    try:
        assert [d.name() for d in conn.listAllDomains() if d.name().startswith(SET)] == []
    finally:
        conn.close()


def test_killed_qemu_is_restarted_and_cloud_init_stays_the_same_instance(
    applied: Path, tmp_path: Path
) -> None:
    instance = sh("cat /var/lib/cloud/data/instance-id").strip()
    before = boot_id()
    sup = SupervisorProcess(applied, tmp_path, "--backoff", "1s")
    try:
        sup.wait(60, event="observed", vm="ivi")
        mark = sup.mark()
        old = kill_qemu(DOMAIN)
        restarted = sup.wait(1000, since=mark, event="restarted", vm="ivi")
        assert restarted["pid"] not in (None, old) and restarted["pid"] == qemu_pid(DOMAIN)
    finally:
        sup.terminate()
    wait_until(answers, 300, "the agent after the restart", step=2)
    assert boot_id() != before
    assert "status: done" in sh("cloud-init status --wait || true", timeout=400)
    assert sh("cat /var/lib/cloud/data/instance-id").strip() == instance
    # runcmd is per instance: a new instance would have appended a second line
    assert sh("cat /var/lib/ivi/runcmd.log").split() == ["ran"]
    assert sh("cat /data/kept.txt").strip() == f"kept {TOKEN}"


def test_destroy_shuts_the_real_guest_down_cleanly(
    applied: Path,
    libvirt_conn: libvirt.virConnect,
    domain_events: Callable[[libvirt.virDomain, int], queue.Queue[tuple[Any, ...]]],
) -> None:
    """Last in this module: a cloud image gets a clean shutdown (the agent,
    else ACPI) before any power-off; libvirt's stop event says which."""
    events = domain_events(libvirt_conn.lookupByName(DOMAIN), libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE)
    result = kvmctl("destroy", str(applied), timeout=180)
    assert result.returncode == 0, result.stderr
    stopped: list[int] = []
    while not stopped:  # events come through the event loop, maybe after the CLI exits
        event, detail = events.get(timeout=10)
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            stopped.append(detail)
    assert stopped == [libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN], stopped
