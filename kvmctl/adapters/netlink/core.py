"""Bridges, bridge ports and tap shaping over rtnetlink: the only module that imports pyroute2.

Its siblings in this package (shaping, vlan, status) work through a `Netlink`
session; support holds the pure rules they share.

Every operation is idempotent and can run inside a named network namespace
(the test lab and migration tests run whole hosts in one). Kernel refusals
come back as HostError (the host lacks something: exit 3) or ApplyError (a
change failed: exit 1), each one sentence naming the interface.

kvmctl marks what it creates with an interface alias (IFLA_IFALIAS), so it
never deletes or takes over a same-named interface someone else made.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kvmctl.adapters.netlink import shaping as _shaping
from kvmctl.adapters.netlink import vlan as _vlan
from kvmctl.adapters.netlink.shaping import RateLimit, Shaping
from kvmctl.adapters.netlink.support import (
    address_changes,
    brport,
    check_ifname,
    link_kind,
    netlink_failure,
    parse_cidr,
)
from kvmctl.errors import HostError

# IFLA_INET6_ADDR_GEN_MODE: no IPv6 link-local address either, so a new bridge
# carries no address at all until set_host_address gives it one.
_IN6_ADDR_GEN_MODE_NONE = 1


@dataclass(frozen=True)
class PortInfo:
    """One bridge port as the host sees it: rx is what the guest sent, tx what it got."""

    ifname: str
    index: int
    mac: str | None
    isolated: bool
    up: bool
    mtu: int
    kind: str | None  # "tun" for a libvirt tap, "veth", ...
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    rx_dropped: int = 0
    tx_dropped: int = 0


@dataclass(frozen=True)
class BridgeInfo:
    name: str
    alias: str | None
    up: bool
    mtu: int
    stp: bool
    forward_delay: int  # centiseconds, as the kernel keeps it
    addresses: list[str] = field(default_factory=list)  # IPv4 and IPv6, address/prefix


class Netlink:
    """An rtnetlink session, in the caller's network namespace or in `netns`."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._where = f" in network namespace '{netns}'" if netns else ""
        try:
            # flags=0: open an existing namespace only, never create one by accident.
            self._ipr: Any = IPRoute(netns=netns, flags=0) if netns else IPRoute()
        except FileNotFoundError:
            raise HostError(f"network namespace '{netns}' does not exist") from None
        except OSError as err:
            raise HostError(f"cannot open a netlink socket{self._where}: {err}") from None

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing shared with the sibling modules ---------------------------------

    @contextmanager
    def _guard(self, action: str, ifname: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as err:
            detail = str(err.args[1]) if len(err.args) > 1 else ""
            raise netlink_failure(err.code, action, ifname, self._where, detail) from None

    def _link(self, ifname: str) -> Any | None:
        """The link message of `ifname`, or None when there is no such interface."""
        try:
            return self._ipr.link("get", ifname=ifname)[0]
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise netlink_failure(err.code, "look up", ifname, self._where) from None

    def _index(self, ifname: str, what: str = "interface") -> int:
        msg = self._link(ifname)
        if msg is None:
            raise HostError(f"there is no {what} '{ifname}'{self._where}")
        return int(msg["index"])

    # --- bridges ------------------------------------------------------------------

    def bridges(self) -> dict[str, str | None]:
        """Every Linux bridge here -> its alias (None when it has none)."""
        with self._guard("list the interfaces", ""):
            links = self._ipr.link("dump")
        return {m.get("ifname"): m.get("ifalias") for m in links if link_kind(m) == "bridge"}

    def bridge_info(self, name: str) -> BridgeInfo | None:
        msg = self._link(name)
        if msg is None or link_kind(msg) != "bridge":
            return None
        data = msg.get("linkinfo").get("data")
        with self._guard("read the addresses of", name):
            addrs = self._ipr.addr("dump", index=msg["index"])
        return BridgeInfo(
            name=name,
            alias=msg.get("ifalias"),
            up=bool(msg["flags"] & 1),
            mtu=int(msg.get("mtu")),
            stp=bool(data.get("IFLA_BR_STP_STATE")) if data is not None else False,
            forward_delay=int(data.get("IFLA_BR_FORWARD_DELAY") or 0) if data is not None else 0,
            addresses=[f"{a.get('address')}/{a['prefixlen']}" for a in addrs],
        )

    def create_bridge(self, name: str, alias: str, mtu: int | None = None) -> None:
        """A bridge marked with `alias`, up, without address, STP off and no forward delay
        (so guests talk as soon as they start). An existing bridge with the same alias is
        brought to that state; any other interface of that name is refused and left alone."""
        check_ifname(name)
        msg = self._link(name)
        if msg is None:
            try:
                with self._guard("create bridge", name):
                    self._ipr.link(
                        "add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0
                    )
            except Exception:
                # Somebody may have made it in the meantime: judge what is there now.
                if self._link(name) is None:
                    raise
            else:
                index = self._index(name, "bridge")
                try:
                    self._new_bridge_setup(index, name, alias)
                except BaseException:
                    # Never leave an unmarked bridge behind: nobody could tell it is ours.
                    self._ipr.link("del", index=index)
                    raise
            msg = self._link(name)
        if msg is None or link_kind(msg) != "bridge" or msg.get("ifalias") != alias:
            raise HostError(self._foreign(name, msg, alias))
        index = int(msg["index"])
        with self._guard("configure bridge", name):
            self._ipr.link("set", index=index, kind="bridge", br_stp_state=0, br_forward_delay=0)
            if mtu is not None and msg.get("mtu") != mtu:
                self._ipr.link("set", index=index, mtu=mtu)
            self._ipr.link("set", index=index, state="up")

    def _new_bridge_setup(self, index: int, name: str, alias: str) -> None:
        with self._guard("mark bridge", name):
            self._ipr.link("set", index=index, ifalias=alias)
        try:
            self._ipr.link(
                "set",
                index=index,
                af_spec={
                    "attrs": [
                        [
                            "AF_INET6",
                            {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", _IN6_ADDR_GEN_MODE_NONE]]},
                        ]
                    ]
                },
            )
        except NetlinkError as err:
            # A kernel without IPv6 gives the bridge no IPv6 address anyway.
            if err.code not in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                raise netlink_failure(err.code, "configure bridge", name, self._where) from None

    def _foreign(self, name: str, msg: Any, alias: str, outcome: str = "left untouched") -> str:
        kind = link_kind(msg) if msg is not None else None
        have = msg.get("ifalias") if msg is not None else None
        what = "bridge" if kind == "bridge" else f"interface (kind {kind or 'unknown'})"
        return (
            f"a {what} named '{name}' already exists{self._where} that kvmctl did not make "
            f"for this network (its alias is {have!r}, expected {alias!r}): it was {outcome}; "
            "rename the bridge in the spec or remove the existing one"
        )

    def delete_bridge(self, name: str, alias: str) -> None:
        """Delete the bridge if it carries `alias`; a missing bridge is fine, any other
        interface of that name is refused and left alone."""
        msg = self._link(name)
        if msg is None:
            return
        if link_kind(msg) != "bridge" or msg.get("ifalias") != alias:
            raise HostError(self._foreign(name, msg, alias, "not deleted"))
        try:
            with self._guard("delete bridge", name):
                self._ipr.link("del", index=msg["index"])
        except HostError:
            if self._link(name) is not None:  # ENODEV: gone meanwhile, which is the goal
                raise

    def set_host_address(self, bridge: str, cidr: str | ipaddress.IPv4Interface | None) -> None:
        """Make `cidr` the bridge's only IPv4 address (None: no IPv4 address)."""
        wanted = parse_cidr(cidr) if cidr is not None else None
        index = self._index(bridge, "bridge")
        with self._guard("read the addresses of", bridge):
            present = [
                ipaddress.IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
                for a in self._ipr.addr("dump", index=index, family=socket.AF_INET)
            ]
        remove, add = address_changes(present, wanted)
        with self._guard("set the host address of", bridge):
            for a in remove:
                self._ipr.addr("del", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
            for a in add:
                self._ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)

    # --- ports --------------------------------------------------------------------

    def set_port_isolated(self, ifname: str, on: bool) -> None:
        """Isolated ports reach non-isolated ports only, never each other."""
        msg = self._link(ifname)
        if msg is None:
            raise HostError(f"there is no interface '{ifname}'{self._where}")
        if brport(msg) is None:
            raise HostError(f"'{ifname}'{self._where} is not a bridge port: cannot isolate it")
        with self._guard("set port isolation on", ifname):
            self._ipr.brport("set", index=msg["index"], isolated=int(on))

    def ports(self, bridge: str) -> list[PortInfo]:
        index = self._index(bridge, "bridge")
        with self._guard("list the ports of", bridge):
            links = self._ipr.link("dump")
        out = []
        for m in links:
            if m.get("master") != index or brport(m) is None:
                continue
            stats = m.get("stats64") or {}
            out.append(
                PortInfo(
                    ifname=m.get("ifname"),
                    index=int(m["index"]),
                    mac=m.get("address"),
                    isolated=bool(brport(m).get("IFLA_BRPORT_ISOLATED")),
                    up=bool(m["flags"] & 1),
                    mtu=int(m.get("mtu")),
                    kind=link_kind(m),
                    **{k: int(stats.get(k) or 0) for k in _COUNTERS},
                )
            )
        return sorted(out, key=lambda p: p.ifname)

    # --- bandwidth ----------------------------------------------------------------

    def shape(self, ifname: str, inbound: RateLimit | None, outbound: RateLimit | None) -> None:
        """Limit a VM's tap; directions as seen from the guest (bytes/s). None: no limit."""
        _shaping.shape(self, ifname, inbound, outbound)

    def unshape(self, ifname: str) -> None:
        _shaping.unshape(self, ifname)

    def shaping(self, ifname: str) -> Shaping:
        """The limits in place on a tap now (rates None where there is none)."""
        return _shaping.read(self, ifname)

    def prune_shaping(self) -> list[str]:
        """Delete kvmctl's ifb devices whose tap is gone (its VM stopped); their names."""
        return _shaping.prune(self)

    # --- VLANs --------------------------------------------------------------------

    def vlan_supported(self) -> bool:
        """Whether this kernel can put bridge ports on VLANs (802.1Q + VLAN filtering)."""
        return _vlan.supported()

    def set_port_vlan(self, ifname: str, vid: int) -> None:
        """Make a bridge port an untagged access port of VLAN `vid`; HostError where the
        kernel has no 802.1Q."""
        _vlan.set_port_vlan(self, ifname, vid)


_COUNTERS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_dropped",
    "tx_dropped",
)
