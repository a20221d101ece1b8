"""``<interface>`` and its ``<bandwidth>`` shaping."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, value
from kvmctl.xml.convert import INT, YESNO
from kvmctl.xml.names import validate_ifname, validate_mac


class BandwidthRate(XMLModel, tag="inbound"):
    """Used as both ``<inbound>`` and ``<outbound>``. Rates in KiB/s, burst in KiB."""

    average: int | None = value("@average", INT, default=None)
    peak: int | None = value("@peak", INT, default=None)
    floor: int | None = value("@floor", INT, default=None)
    burst: int | None = value("@burst", INT, default=None)

    def _validate(self) -> None:
        if self.average is None and self.floor is None:
            raise ValueError("bandwidth: a rate needs an average (or, inbound, a floor)")


class Bandwidth(XMLModel, tag="bandwidth"):
    """Kept for completeness: libvirt implements it with an sfq qdisc, which
    not every host kernel has, so kvmctl may shape traffic by other means."""

    inbound: BandwidthRate | None = child(BandwidthRate, tag="inbound", default=None)
    outbound: BandwidthRate | None = child(BandwidthRate, tag="outbound", default=None)

    def _validate(self) -> None:
        if self.outbound is not None and self.outbound.floor is not None:
            raise ValueError("bandwidth: floor applies to inbound traffic only")


class Interface(XMLModel, tag="interface"):
    """``bridge`` and ``network`` are what kvmctl creates; ``user`` and
    ``ethernet`` are read so other tools' domains parse too.
    ``target_dev`` names the host tap device; libvirt discards names that
    start with its own prefixes (vnet, vif, macvtap) from the persistent XML.
    A user ``alias`` must start with ``ua-``."""

    type: Literal["bridge", "network", "user", "ethernet"] = value("@type")
    mac: str | None = value("mac/@address", default=None)
    source_bridge: str | None = value("source/@bridge", default=None)
    source_network: str | None = value("source/@network", default=None)
    bandwidth: Bandwidth | None = child(Bandwidth, default=None)
    port_isolated: bool | None = value("port/@isolated", YESNO, default=None)
    target_dev: str | None = value("target/@dev", default=None)
    model: Literal["virtio", "e1000", "e1000e", "rtl8139"] | None = value(
        "model/@type", default=None
    )
    mtu: int | None = value("mtu/@size", INT, default=None)
    alias: str | None = value("alias/@name", default=None)

    def _validate(self) -> None:
        if self.mac is not None:
            validate_mac(self.mac)
        if self.target_dev is not None:
            validate_ifname(self.target_dev)
        if self.type == "bridge":
            if self.source_bridge is None or self.source_network is not None:
                raise ValueError("interface: type 'bridge' needs source_bridge (and no network)")
            validate_ifname(self.source_bridge)
        elif self.type == "network":
            if self.source_network is None or self.source_bridge is not None:
                raise ValueError("interface: type 'network' needs source_network (and no bridge)")
        elif self.source_bridge is not None or self.source_network is not None:
            raise ValueError(f"interface: type {self.type!r} takes no bridge or network source")
