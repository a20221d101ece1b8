"""kvmctl's bridges, bridge ports, VLANs and tap shaping over rtnetlink.

`Netlink` (core) is the one session over pyroute2; shaping (tc htb + ifb)
and vlan (802.1Q on bridge ports) work through it; support holds the pure
rules they share (names, aliases, error mapping). What `kvmctl net status`
makes of it is kvmctl.observe.net.
"""

from __future__ import annotations

from kvmctl.adapters.netlink.core import BridgeInfo, Netlink, PortInfo
from kvmctl.adapters.netlink.shaping import RateLimit, Shaping

__all__ = ["BridgeInfo", "Netlink", "PortInfo", "RateLimit", "Shaping"]
