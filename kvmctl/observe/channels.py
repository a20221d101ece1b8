"""The set's channels as `kvmctl status` shows them: each channel's kind,
host end and members, and whether each member's live domain carries the
device (pure: the live XML is handed in)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from kvmctl.planner.channel_audit import carries
from kvmctl.planner.channels import ChannelPlan, Device
from kvmctl.spec.channels import MIB


@dataclass(frozen=True)
class MemberStatus:
    vm: str
    access: str
    # None: the domain is not running, so it carries nothing to look at.
    carried: bool | None

    def cell(self) -> str:
        seen = {True: "carried", False: "MISSING", None: "not running"}[self.carried]
        return f"{self.vm} ({self.access}, {seen})"


@dataclass(frozen=True)
class ChannelStatus:
    channel: str
    kind: str
    host_end: str  # the region's file, the serial socket, or the vsock CID
    members: tuple[MemberStatus, ...]
    size_mib: int | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def channel_status(channels: ChannelPlan, live: Mapping[str, str | None]) -> list[ChannelStatus]:
    """`live`: VM -> its domain's live XML, None (or left out) when it does
    not run."""

    def member(vm: str, device: Device) -> MemberStatus:
        xml = live.get(vm)
        return MemberStatus(vm, "rw", None if xml is None else carries(device, xml))

    rows = [
        ChannelStatus(
            r.channel, "shm", r.path, tuple(member(vm, r) for vm in r.members), r.size // MIB
        )
        for r in channels.regions
    ]
    rows += [
        ChannelStatus(s.channel, "serial", s.socket, (member(s.vm, s),)) for s in channels.serials
    ]
    rows += [
        ChannelStatus(v.channel, "vsock", f"CID {v.cid}", (member(v.vm, v),))
        for v in channels.vsocks
    ]
    return rows


def members_of(channels: ChannelPlan) -> set[str]:
    """The VMs whose live XML `channel_status` needs."""
    vms = {vm for r in channels.regions for vm in r.members}
    return vms | {s.vm for s in channels.serials} | {v.vm for v in channels.vsocks}
