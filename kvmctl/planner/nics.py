"""VM network attachments: stable MACs and addresses, derived, never random.

A MAC or address that changed on every apply would restart VMs for nothing,
so both come from a hash of (set, VM, network).
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from kvmctl.spec.models import Cockpit
from kvmctl.spec.networks import Bandwidth


@dataclass(frozen=True)
class NicPlan:
    network: str
    bridge: str
    mac: str
    address: ipaddress.IPv4Interface  # address/prefix handed to the guest
    port_isolated: bool
    tap: str  # the host side of the NIC, named by kvmctl so it can be found and shaped
    bandwidth: Bandwidth | None = None


def tap_name(domain: str, mac: str) -> str:
    """A stable host tap name (<= 15 chars) that survives restarts."""
    return "kvt" + hashlib.sha256(f"{domain}/{mac}".encode()).hexdigest()[:10]


def stable_mac(set_name: str, vm: str, network: str) -> str:
    digest = hashlib.sha256(f"{set_name}/{vm}/{network}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def plan_nics(spec: Cockpit) -> dict[str, list[NicPlan]]:
    """Every VM's NICs, in spec order. Addresses not given are picked from the
    subnet by a hash, skipping the host's, explicit ones and earlier picks."""
    taken: dict[str, set[ipaddress.IPv4Address]] = {n: set() for n in spec.networks}
    for name, net in spec.networks.items():
        if net.host_address is not None:
            taken[name].add(net.host_address)
        for vm in spec.vms.values():
            taken[name].update(a.address for a in vm.networks if a.name == name and a.address)

    result: dict[str, list[NicPlan]] = {}
    for vm_name in sorted(spec.vms):
        nics: list[NicPlan] = []
        for att in spec.vms[vm_name].networks:
            net = spec.networks[att.name]
            address = att.address or _pick(spec.name, vm_name, net.subnet, taken[att.name])
            taken[att.name].add(address)
            mac = att.mac or stable_mac(spec.name, vm_name, att.name)
            nics.append(
                NicPlan(
                    network=att.name,
                    bridge=net.bridge,
                    mac=mac,
                    address=ipaddress.IPv4Interface(f"{address}/{net.subnet.prefixlen}"),
                    port_isolated=att.port_isolated,
                    tap=tap_name(f"{spec.name}-{vm_name}", mac),
                    bandwidth=att.bandwidth,
                )
            )
        result[vm_name] = nics
    return {name: result[name] for name in spec.vms}


def _pick(
    set_name: str,
    vm: str,
    subnet: ipaddress.IPv4Network,
    taken: set[ipaddress.IPv4Address],
) -> ipaddress.IPv4Address:
    hosts = subnet.num_addresses - 2
    if hosts <= 0:
        raise ValueError(f"{subnet} has no host addresses")
    # Skip .1, which users habitually give to a gateway or the host.
    start = int.from_bytes(hashlib.sha256(f"{set_name}/{vm}".encode()).digest()[:4], "big")
    for step in range(hosts):
        offset = 2 + (start + step) % max(hosts - 1, 1)
        candidate = subnet.network_address + offset
        if candidate not in taken and candidate != subnet.broadcast_address:
            return candidate
    raise ValueError(f"no free address left in {subnet}")
