"""Bridges the set needs vs bridges that exist (pure).

kvmctl marks a bridge it creates with an interface alias naming the set and
network, so destroy removes only its own bridges, and a same-named bridge
somebody else made is refused rather than taken over.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from kvmctl.spec.models import Cockpit

ALIAS_PREFIX = "kvmctl:"


def bridge_alias(set_name: str, network: str) -> str:
    return f"{ALIAS_PREFIX}{set_name}:{network}"


def parse_alias(alias: str | None) -> tuple[str, str] | None:
    """(set, network) from a kvmctl bridge alias, else None."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX) :].split(":")
    return (parts[0], parts[1]) if len(parts) == 2 else None


@dataclass(frozen=True)
class BridgePlan:
    network: str
    bridge: str
    alias: str
    isolated: bool
    mtu: int | None
    vlan: int | None
    host_address: ipaddress.IPv4Interface | None


@dataclass(frozen=True)
class BridgeAction:
    kind: Literal["create", "unchanged", "delete"]
    bridge: str
    network: str


def plan_bridges(spec: Cockpit, used: set[str] | None = None) -> list[BridgePlan]:
    """Bridges of the networks the VMs of this host use (all networks if `used` is None)."""
    out = []
    for name, net in spec.networks.items():
        if used is not None and name not in used:
            continue
        host_if = (
            ipaddress.IPv4Interface(f"{net.host_address}/{net.subnet.prefixlen}")
            if net.host_address
            else None
        )
        out.append(
            BridgePlan(
                name,
                net.bridge,
                bridge_alias(spec.name, name),
                net.isolated,
                net.mtu,
                net.vlan,
                host_if,
            )
        )
    return out


def diff_bridges(
    set_name: str, wanted: list[BridgePlan], existing: dict[str, str | None]
) -> tuple[list[BridgeAction], list[str]]:
    """`existing` maps bridge name -> its alias. Returns actions and problems."""
    actions: list[BridgeAction] = []
    problems: list[str] = []
    wanted_names = {b.bridge for b in wanted}
    for b in wanted:
        if b.bridge not in existing:
            actions.append(BridgeAction("create", b.bridge, b.network))
        elif existing[b.bridge] == b.alias:
            actions.append(BridgeAction("unchanged", b.bridge, b.network))
        else:
            problems.append(
                f"bridge '{b.bridge}' already exists and kvmctl did not create it for network "
                f"'{b.network}' of '{set_name}': kvmctl will not take it over (rename the bridge "
                "in the spec or remove the existing one)"
            )
    for bridge, alias in sorted(existing.items()):
        owner = parse_alias(alias)
        if owner and owner[0] == set_name and bridge not in wanted_names:
            actions.append(BridgeAction("delete", bridge, owner[1]))
    return actions, problems


def vlan_problems(spec: Cockpit, vlan_supported: bool) -> list[str]:
    if vlan_supported:
        return []
    users = sorted(
        [f"network '{n}'" for n, net in spec.networks.items() if net.vlan is not None]
        + [
            f"VM '{v}' on '{a.name}'"
            for v, vm in spec.vms.items()
            for a in vm.networks
            if a.vlan is not None
        ]
    )
    if not users:
        return []
    return [
        f"{', '.join(users)} use VLANs, but this host's kernel has no 802.1Q support "
        "(CONFIG_VLAN_8021Q is off; bridge VLAN filtering is not available): remove vlan: or "
        "run on a host with 802.1Q"
    ]
