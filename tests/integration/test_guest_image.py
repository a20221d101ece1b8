"""The built-in test guests under the real libvirtd and QEMU (TCG here).

What later tests rely on: the guest boots to KVMCTL-READY, its agent answers
guest-ping and guest-exec, NICs get their addresses by MAC and guests on one
bridge reach each other, /data keeps its content across reboot and
destroy/start, the i6300esb watchdog fires (and libvirt says so) once petting
stops, the probe mode powers off, and the display shows the guest's name.
Guest traffic stays on bridges created here, with no uplink and no host
address.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import libvirt
import pytest

from kvmctl.host import images

if TYPE_CHECKING:
    # conftest.py is not importable by name at run time (tests/integration is
    # no package); the fixtures hand out its objects.
    from conftest import GuestFactory, TestGuest

pytestmark = [pytest.mark.integration, pytest.mark.no_set]

SUBNET = ipaddress.IPv4Network("10.77.250.0/24")


def addr(host: int) -> str:
    return f"{SUBNET[host]}/{SUBNET.prefixlen}"


def test_images_verify(guest_images: dict[str, images.GuestImage]) -> None:
    rt = guest_images["test-guest-rt"]
    cloud = guest_images["test-guest"]
    assert rt.kernel_release.endswith("-rt-amd64")
    assert cloud.kernel_release.endswith("-cloud-amd64")
    assert "i6300esb" in rt.manifest["modules"]["load_order"]
    # <panic model='isa'/> needs its driver, or a panic looks like a reboot.
    for image in (rt, cloud):
        order = image.manifest["modules"]["load_order"]
        assert order.index("pvpanic") < order.index("pvpanic_mmio")
    # HOST-NOTES: virtio_ring and virtio must be loaded before virtio_pci.
    order = cloud.manifest["modules"]["load_order"]
    assert order.index("virtio_ring") < order.index("virtio") < order.index("virtio_pci")
    assert "console=ttyS0" in cloud.cmdline_base


def test_agent_ping_and_exec(test_guest: TestGuest) -> None:
    assert test_guest.agent("guest-ping") == {}
    res = test_guest.tool("info")
    info = res.fields()
    assert info["name"] == test_guest.name
    assert info["data"] == "mounted"
    assert info["kernel"].endswith("-cloud-amd64")
    # Arguments reach the guest as they are, with no shell in between.
    odd = "a b;$(echo x)"
    res = test_guest.exec("/bin/echo", [odd])
    assert res.ok and res.stdout == odd + "\n"
    res = test_guest.exec("/bin/cat", stdin=b"through stdin")
    assert res.stdout == "through stdin"
    res = test_guest.sh("exit 3")
    assert res.exitcode == 3


def test_toolbox(test_guest: TestGuest) -> None:
    cpu = test_guest.tool("cpuloop", "1").fields()
    assert int(cpu["iterations_per_second"]) > 0
    disk = test_guest.tool("diskwrite", "4").fields()
    assert disk["written_mb"] == "4"
    dirty = test_guest.tool("dirty", "4", "2").fields()
    assert int(dirty["dirtied_mb"]) == 8
    jitter = test_guest.tool("jitter", "1", "2000").fields()
    assert jitter["period_us"] == "2000" and int(jitter["samples"]) > 0
    assert int(jitter["min_us"]) <= int(jitter["p99_us"]) <= int(jitter["max_us"])

    assert "counter=started" in test_guest.tool("counter", "start").stdout
    test_guest.sh("sleep 1")
    first = test_guest.tool("counter", "read").fields()
    test_guest.sh("sleep 1")
    second = test_guest.tool("counter", "read").fields()
    assert int(first["memory"]) >= 3
    assert int(second["memory"]) > int(first["memory"])
    assert second["disk"] != "none"
    test_guest.tool("counter", "stop")

    assert test_guest.tool("watchdog", "status").stdout.strip() == "watchdog=none"
    bad = test_guest.tool("cpuloop", "x", check=False)
    assert bad.exitcode == 2 and "cpuloop SECONDS" in bad.stderr
    bad = test_guest.tool("jitter", "0", check=False)
    assert bad.exitcode == 2 and "jitter SECONDS" in bad.stderr


def test_two_guests_on_a_bridge(guest_factory: GuestFactory, test_bridge: str) -> None:
    a = guest_factory("a", nics=[(test_bridge, addr(1))], display=True, wait=False)
    b = guest_factory("b", nics=[(test_bridge, addr(2))], display=True, wait=False)
    for g in (a, b):
        g.wait_ready()
        g.wait_agent()

    assert f"eth0={addr(1)}" in a.tool("info").fields()["addrs"]
    a.tool("ping", str(SUBNET[2]), "2")
    b.tool("ping", str(SUBNET[1]), "2")

    b.tool("echo-server", "tcp", "7001")
    b.tool("echo-server", "udp", "7002")
    assert (
        a.tool("echo-client", "tcp", str(SUBNET[2]), "7001", "over-tcp").stdout.strip()
        == "over-tcp"
    )
    assert (
        a.tool("echo-client", "udp", str(SUBNET[2]), "7002", "over-udp").stdout.strip()
        == "over-udp"
    )
    # The UDP server serves the next peer too.
    assert a.tool("echo-client", "udp", str(SUBNET[2]), "7002", "again").stdout.strip() == "again"

    # Each display shows its own name, so the two pictures differ.
    mime_a, shot_a = a.screenshot()
    _, shot_b = b.screenshot()
    assert mime_a.startswith("image/")
    assert shot_a and shot_b and shot_a != shot_b


def test_nic_without_address_no_disk(guest_factory: GuestFactory, test_bridge: str) -> None:
    g = guest_factory("bare", nics=[(test_bridge, None)], data_disk_mib=None)
    info = g.tool("info").fields()
    assert info["addrs"] == "none"  # the NIC exists but no address was asked for
    assert info["data"] == "none"


def test_data_survives_reboot_and_destroy(test_guest: TestGuest) -> None:
    secret = secrets.token_hex(8)
    assert test_guest.sh('echo "$1" > /data/token && sync', secret).ok

    test_guest.reboot()
    test_guest.wait_agent()
    assert test_guest.sh("cat /data/token").stdout.strip() == secret

    test_guest.sh("sync")
    mark = test_guest.mark()
    test_guest.destroy()
    test_guest.start()
    test_guest.wait_ready(since=mark)
    test_guest.wait_agent()
    assert test_guest.sh("cat /data/token").stdout.strip() == secret
    # Formatted once only: a second boot finds the file system and keeps it.
    assert test_guest.serial_text().count("formatted /dev/vda") == 1


def test_watchdog_fires_when_petting_stops(
    guest_factory: GuestFactory,
    domain_events: Callable[[libvirt.virDomain, int], object],
) -> None:
    g = guest_factory(
        "wdt",
        flavour="test-guest-rt",
        watchdog="reset",
        cmdline_extra={"kvmctl.wdt": "2"},
        data_disk_mib=None,
    )
    events = domain_events(g.dom, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG)
    assert g.tool("watchdog", "status").stdout.strip() == "watchdog=petting"
    assert g.tool("info").fields()["kernel"].endswith("-rt-amd64")

    mark = g.mark()
    g.tool("watchdog", "stop")
    (action,) = events.get(timeout=45)  # type: ignore[attr-defined]
    assert action == libvirt.VIR_DOMAIN_EVENT_WATCHDOG_RESET
    # Reset, not killed: the guest boots again by itself.
    g.wait_ready(since=mark)


def test_watchdog_keeps_quiet_while_petted(
    guest_factory: GuestFactory,
    domain_events: Callable[[libvirt.virDomain, int], object],
) -> None:
    g = guest_factory(
        "wdtok",
        flavour="test-guest-rt",
        watchdog="reset",
        cmdline_extra={"kvmctl.wdt": "2"},
        data_disk_mib=None,
    )
    events = domain_events(g.dom, libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG)
    g.sh("sleep 8")
    assert events.empty()  # type: ignore[attr-defined]
    assert g.tool("watchdog", "status").stdout.strip() == "watchdog=petting"


def test_probe_mode_powers_off(guest_factory: GuestFactory) -> None:
    g = guest_factory("probe", cmdline_extra={"kvmctl.probe": "1"}, data_disk_mib=None, wait=False)
    g.wait_for(images.PROBE_MARKER)
    deadline = time.monotonic() + 15
    while g.dom.isActive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not g.dom.isActive()
    assert images.READY_MARKER not in g.serial_text()


def test_orderly_shutdown_by_acpi_and_agent(guest_factory: GuestFactory) -> None:
    g = guest_factory("halt", data_disk_mib=16)

    def stopped_within(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while g.dom.isActive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    # ACPI power button: busybox acpid in the guest runs poweroff.
    mark = g.mark()
    g.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
    assert stopped_within(30)
    assert f"KVMCTL-SHUTDOWN {g.name}" in g.serial_text()[mark:]

    # Through the agent: qemu-ga runs /sbin/shutdown, which busybox lacks.
    mark = g.mark()
    g.start()
    g.wait_ready(since=mark)
    g.wait_agent()
    g.dom.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_GUEST_AGENT)
    assert stopped_within(30)
    assert f"KVMCTL-SHUTDOWN {g.name}" in g.serial_text()[mark:]
