"""What `kvmctl net status` shows: bridges, their ports, and which VM NIC each port is,
read through the netlink adapter.

A libvirt tap carries the guest's MAC with its first byte set to 0xfe, so a
port is matched to a VM through the spec's planned MACs (NicPlan.mac); the
tap's name (vnetN) says nothing stable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.netlink.support import guest_mac
from kvmctl.errors import HostError
from kvmctl.planner.networks import bridge_alias, parse_alias
from kvmctl.planner.nics import plan_nics

if TYPE_CHECKING:
    from kvmctl.adapters.netlink import PortInfo
    from kvmctl.planner.nics import NicPlan
    from kvmctl.spec.models import Cockpit


@dataclass(frozen=True)
class PortStatus:
    ifname: str
    mac: str | None
    vm: str | None
    network: str | None
    isolated: bool
    isolated_wanted: bool | None  # from the spec, when the port is a known NIC
    up: bool
    rx_bytes: int
    tx_bytes: int
    rx_packets: int
    tx_packets: int
    limit_in: int | None = None  # bytes/s the guest may receive
    limit_out: int | None = None  # bytes/s the guest may send


@dataclass(frozen=True)
class BridgeStatus:
    bridge: str
    set_name: str | None
    network: str | None
    alias: str | None
    present: bool
    owned: bool  # carries the alias kvmctl gives it (for this spec, when one is given)
    up: bool = False
    mtu: int | None = None
    addresses: list[str] = field(default_factory=list)
    ports: list[PortStatus] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def net_status(spec: Cockpit | None, netns: str | None = None) -> list[BridgeStatus]:
    """The spec's bridges (or, without one, every bridge kvmctl made) as found
    in network namespace `netns` (None: this one), each port named by its VM NIC."""
    with Netlink(netns) as nl:
        return collect(nl, spec, plan_nics(spec) if spec is not None else None)


def nic_index(nics: dict[str, list[NicPlan]]) -> dict[str, tuple[str, NicPlan]]:
    """Guest MAC -> (VM, its NIC plan)."""
    return {n.mac.lower(): (vm, n) for vm, plans in nics.items() for n in plans}


def port_status(
    port: PortInfo,
    by_mac: dict[str, tuple[str, NicPlan]],
    limits: tuple[int | None, int | None] = (None, None),
) -> PortStatus:
    mac = guest_mac(port.mac)
    match = by_mac.get(mac) if mac else None
    return PortStatus(
        ifname=port.ifname,
        mac=port.mac,
        vm=match[0] if match else None,
        network=match[1].network if match else None,
        isolated=port.isolated,
        isolated_wanted=match[1].port_isolated if match else None,
        up=port.up,
        rx_bytes=port.rx_bytes,
        tx_bytes=port.tx_bytes,
        rx_packets=port.rx_packets,
        tx_packets=port.tx_packets,
        limit_in=limits[0],
        limit_out=limits[1],
    )


def wanted_bridges(
    spec: Cockpit | None, existing: dict[str, str | None]
) -> list[tuple[str, str | None, str | None, str | None]]:
    """(bridge, set, network, expected alias) to show: the spec's networks, or else
    every bridge that carries a kvmctl alias."""
    if spec is not None:
        return [
            (net.bridge, spec.name, name, bridge_alias(spec.name, name))
            for name, net in spec.networks.items()
        ]
    out: list[tuple[str, str | None, str | None, str | None]] = []
    for bridge, alias in sorted(existing.items()):
        owner = parse_alias(alias)
        if owner is not None:
            out.append((bridge, owner[0], owner[1], alias))
    return out


def collect(
    nl: Netlink, spec: Cockpit | None, nics: dict[str, list[NicPlan]] | None = None
) -> list[BridgeStatus]:
    existing = nl.bridges()
    by_mac = nic_index(nics or {})
    out = []
    for bridge, set_name, network, expected in wanted_bridges(spec, existing):
        if bridge not in existing:
            out.append(BridgeStatus(bridge, set_name, network, None, False, False))
            continue
        info = nl.bridge_info(bridge)
        ports = []
        for p in nl.ports(bridge):
            try:
                shaping = nl.shaping(p.ifname)
                limits = (shaping.inbound, shaping.outbound)
            except HostError:  # the tap went away since the listing (VM stopped)
                continue
            ports.append(port_status(p, by_mac, limits))
        out.append(
            BridgeStatus(
                bridge=bridge,
                set_name=set_name,
                network=network,
                alias=existing[bridge],
                present=True,
                owned=existing[bridge] == expected,
                up=info.up if info else False,
                mtu=info.mtu if info else None,
                addresses=info.addresses if info else [],
                ports=ports,
            )
        )
    return out
