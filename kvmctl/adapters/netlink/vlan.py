"""Bridge-port VLANs (part of the netlink adapter): refused plainly where the kernel lacks 802.1Q.

A port VLAN here is bridge VLAN filtering: the bridge filters by VLAN and the
port becomes an untagged access port (PVID) of exactly one VLAN, so the guest
needs no VLAN configuration of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kvmctl.adapters.netlink.support import (
    access_vlan_changes,
    brport,
    check_vid,
    read_kernel_config,
    vlan_support,
    vlan_unsupported_message,
)
from kvmctl.errors import HostError

if TYPE_CHECKING:
    from kvmctl.adapters.netlink import Netlink


def supported() -> bool:
    # Kernel features are host-wide: the answer is the same in every namespace.
    return vlan_support(
        read_kernel_config(),
        Path("/proc/net/vlan").exists(),
        Path("/sys/module/8021q").exists(),
    )


def set_port_vlan(nl: Netlink, ifname: str, vid: int) -> None:
    check_vid(vid)
    if not nl.vlan_supported():
        raise HostError(vlan_unsupported_message(ifname, vid))
    msg = nl._link(ifname)
    if msg is None or brport(msg) is None:
        raise HostError(f"'{ifname}'{nl._where} is not a bridge port: cannot set its VLAN")
    with nl._guard("turn on VLAN filtering for the bridge of", ifname):
        nl._ipr.link("set", index=msg.get("master"), kind="bridge", br_vlan_filtering=1)
    with nl._guard("read the VLANs of", ifname):
        current = _port_vids(nl, msg["index"])
    add, remove = access_vlan_changes(current, vid)
    with nl._guard(f"put on VLAN {vid}", ifname):
        for v in add:
            nl._ipr.vlan_filter(
                "add", index=msg["index"], vlan_info={"vid": v, "flags": ["pvid", "untagged"]}
            )
        for v in remove:
            nl._ipr.vlan_filter("del", index=msg["index"], vlan_info={"vid": v})


def _port_vids(nl: Netlink, index: int) -> set[int]:
    vids: set[int] = set()
    for m in nl._ipr.get_vlans():
        if m["index"] != index:
            continue
        spec = m.get("af_spec")
        for name, value in spec["attrs"] if spec is not None else []:
            if name == "IFLA_BRIDGE_VLAN_INFO":
                vids.add(int(value["vid"]))
    return vids
