"""`kvmctl net status` without a kernel: ports matched to NICs, bridges chosen, rows."""

from __future__ import annotations

import pytest

from kvmctl.adapters.netlink import PortInfo
from kvmctl.commands.net import rows
from kvmctl.observe.net import (
    BridgeStatus,
    nic_index,
    port_status,
    wanted_bridges,
)
from kvmctl.planner.nics import plan_nics
from kvmctl.spec import parse_spec

pytestmark = pytest.mark.unit

SPEC = parse_spec(
    """
name: demo
networks:
  vehicle: {bridge: kvbr-vehicle, subnet: 10.77.1.0/24, isolated: true}
  media: {bridge: kvbr-media, subnet: 10.77.2.0/24}
vms:
  cluster: {networks: [{name: vehicle, port_isolated: true}]}
  ivi: {networks: [media, vehicle]}
"""
)
NICS = plan_nics(SPEC)


def tap(ifname: str, mac: str | None, isolated: bool = False) -> PortInfo:
    return PortInfo(ifname, 7, mac, isolated, True, 1500, "tun", 10, 20, 1, 2)


def test_a_libvirt_tap_is_matched_to_its_vm_nic() -> None:
    cluster = NICS["cluster"][0]
    status = port_status(tap("vnet3", "fe" + cluster.mac[2:]), nic_index(NICS), (1000, None))
    assert (status.vm, status.network) == ("cluster", "vehicle")
    assert (status.isolated, status.isolated_wanted) == (False, True)
    assert (status.rx_bytes, status.tx_bytes, status.limit_in, status.limit_out) == (
        10,
        20,
        1000,
        None,
    )


def test_a_vm_with_two_nics_is_told_apart() -> None:
    by_mac = nic_index(NICS)
    media, vehicle = NICS["ivi"]
    assert port_status(tap("vnet1", "fe" + media.mac[2:]), by_mac).network == "media"
    assert port_status(tap("vnet2", "fe" + vehicle.mac[2:]), by_mac).network == "vehicle"


def test_an_unknown_port_has_no_vm() -> None:
    status = port_status(tap("veth0", "4e:56:8d:92:b5:06"), nic_index(NICS))
    assert status.vm is None and status.isolated_wanted is None


def test_bridges_of_the_spec_or_every_kvmctl_bridge() -> None:
    existing = {
        "kvbr-vehicle": "kvmctl:demo:vehicle",
        "kvbr-other": "kvmctl:other:lan",
        "virbr0": None,
        "docker0": "not ours",
    }
    assert wanted_bridges(SPEC, existing) == [
        ("kvbr-vehicle", "demo", "vehicle", "kvmctl:demo:vehicle"),
        ("kvbr-media", "demo", "media", "kvmctl:demo:media"),
    ]
    assert wanted_bridges(None, existing) == [
        ("kvbr-other", "other", "lan", "kvmctl:other:lan"),
        ("kvbr-vehicle", "demo", "vehicle", "kvmctl:demo:vehicle"),
    ]


def test_rows() -> None:
    cluster = NICS["cluster"][0]
    port = port_status(tap("vnet3", "fe" + cluster.mac[2:]), nic_index(NICS), (1_000_000, 500_000))
    bridges = [
        BridgeStatus("kvbr-vehicle", "demo", "vehicle", "kvmctl:demo:vehicle", True, True, True,
                     1500, [], [port]),
        BridgeStatus("kvbr-media", "demo", "media", None, False, False),
        BridgeStatus("kvbr-x", "demo", "x", "someone", True, False, False),
    ]  # fmt: skip
    assert rows(bridges) == [
        [
            "kvbr-vehicle",
            "demo:vehicle",
            "up",
            "vnet3",
            "cluster (vehicle)",
            "no (spec: yes)",
            10,
            20,
            "1 MB/s",
            "0.5 MB/s",
        ],
        ["kvbr-media", "demo:media", "missing", "", "", "", "", "", "", ""],
        ["kvbr-x", "demo:x", "down, not kvmctl's", "", "", "", "", "", "", ""],
    ]
