"""A real operating system through kvmctl: the Debian 12 guest image (systemd,
cloud-init, the guest agent as a service) applied as `image: {builtin:
debian-12}`, ready by the cloud-init probe (the agent answers, then cloud-init
says done), set up by cloud-init from the spec (a user, a file, a systemd unit
that ran, the planned address on the NIC by MAC), and destroyed without a
trace. Checked inside the guest, through its agent."""

from __future__ import annotations

import ipaddress
import json
import queue
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.host import images
from tests.integration.cockpit_helpers import kvmctl
from tests.integration.conftest import token
from tests.integration.ops_helpers import applied_set, guest_run

pytestmark = pytest.mark.integration

TOKEN = token(2)
SET = f"kvt-deb-{TOKEN}"
BRIDGE = f"kvt{TOKEN}deb"
SUBNET = ipaddress.IPv4Network(f"10.79.{int(TOKEN, 16) % 250}.0/24")
ADDRESS = SUBNET.network_address + 20
SPEC = f"""
name: {SET}
networks:
  media: {{bridge: {BRIDGE}, subnet: {SUBNET}, isolated: true}}
vms:
  ivi:
    memory: {{size: 768MiB}}
    disk: {{size: 2GiB}}
    networks: [{{name: media, address: {ADDRESS}}}]
    ready: {{probe: cloud-init, timeout: 400s}}
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
          runcmd:
            - [systemctl, daemon-reload]
            - [systemctl, enable, --now, ivi-media.service]
"""
DOMAIN = f"{SET}-ivi"


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    images.disk_image("debian-12")  # built by `make images`; says so when it is not
    with applied_set(tmp_path_factory.mktemp("deb"), SET, SPEC) as path:
        yield path


def sh(command: str, timeout: float = 60) -> str:
    return guest_run(DOMAIN, "/bin/sh", "-c", command, timeout=timeout)


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
    stopped = []
    while not stopped:  # events come through the event loop, maybe after the CLI exits
        event, detail = events.get(timeout=10)
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            stopped.append(detail)
    assert stopped == [libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN], stopped
