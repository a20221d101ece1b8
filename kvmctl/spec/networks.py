"""The spec's networks and how a VM attaches to them (bridge, subnet, VLAN,
port isolation, bandwidth)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    field_validator,
    model_validator,
)

from kvmctl.spec.types import (
    BRIDGE_RE,
    Model,
    Rate,
    Size,
    VlanId,
)


class Network(Model):
    bridge: str
    subnet: ipaddress.IPv4Network
    isolated: bool = False
    vlan: VlanId | None = None
    mtu: Annotated[int, Field(ge=68, le=65535)] | None = None
    # The host's own address on the bridge; never on an isolated network.
    host_address: ipaddress.IPv4Address | None = None

    @field_validator("bridge")
    @classmethod
    def _bridge_name(cls, value: str) -> str:
        if not BRIDGE_RE.match(value):
            raise ValueError(
                f"'{value}' is not a valid bridge name: at most 15 letters, digits, '-', '_' or '.'"
            )
        return value

    @model_validator(mode="after")
    def _host_address(self) -> Network:
        if self.host_address is not None:
            if self.isolated:
                raise ValueError("an isolated network has no host address")
            if self.host_address not in self.subnet:
                raise ValueError(f"host_address {self.host_address} is outside {self.subnet}")
        return self


class BandwidthLimit(Model):
    average: Rate
    peak: Rate | None = None
    burst: Size | None = None


class Bandwidth(Model):
    """Per-direction limits seen from the guest: `out` is what it sends."""

    in_: BandwidthLimit | None = Field(default=None, alias="in")
    out: BandwidthLimit | None = None
    average: Rate | None = None  # shorthand: both directions
    peak: Rate | None = None
    burst: Size | None = None

    @model_validator(mode="after")
    def _one_form(self) -> Bandwidth:
        short = self.average is not None or self.peak is not None or self.burst is not None
        if short and (self.in_ is not None or self.out is not None):
            raise ValueError("give either average/peak/burst or in/out, not both")
        if not short and self.in_ is None and self.out is None:
            raise ValueError("needs average (both directions) or in/out limits")
        if (self.peak is not None or self.burst is not None) and self.average is None:
            raise ValueError("peak and burst need an average")
        return self

    def limits(self) -> tuple[BandwidthLimit | None, BandwidthLimit | None]:
        """(inbound, outbound) as seen from the guest."""
        if self.average is not None:
            both = BandwidthLimit(average=self.average, peak=self.peak, burst=self.burst)
            return both, both
        return self.in_, self.out


class Attachment(Model):
    name: str
    address: ipaddress.IPv4Address | None = None
    port_isolated: bool = False
    bandwidth: Bandwidth | None = None
    vlan: VlanId | None = None
    mac: Annotated[str, Field(pattern=r"^52:54:00(:[0-9a-f]{2}){3}$")] | None = None


def _attachment(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


AttachmentIn = Annotated[Attachment, BeforeValidator(_attachment)]
