"""Channels between VMs and to the host, planned (pure): shared regions,
serial ports and vsock devices and what the host must offer for them (the
audit rule, that live domains carry exactly these, is `channel_audit.py`).

A shared region is QEMU's ivshmem-plain device, which libvirt backs with the
file /dev/shm/<name>: the name is host-wide, so it is derived from set and
channel (`kvmctl.xml.names.shmem_name`). See docs/channels.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmctl.host.facts import HostFacts
from kvmctl.planner.live import LiveState
from kvmctl.spec.channels import MIB
from kvmctl.spec.models import Cockpit
from kvmctl.spec.safestate import HEARTBEAT_CHANNEL
from kvmctl.spec.units import format_size
from kvmctl.xml.names import shmem_name, shmem_set_prefix

if TYPE_CHECKING:
    pass

SHM_DIR = "/dev/shm"
VHOST_VSOCK = "/dev/vhost-vsock"
# The guest end of a serial channel: /dev/virtio-ports/<SERIAL_PORT_PREFIX><name>.
SERIAL_PORT_PREFIX = "org.kvmctl."
# sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107
# AF_VSOCK: 0-2 are the hypervisor, local and host; 0xFFFFFFFF is "any".
CID_FIRST, CID_LAST = 3, 0xFFFFFFFE


@dataclass(frozen=True)
class ShmRegion:
    channel: str
    name: str  # libvirt's <shmem name>, the file name in /dev/shm
    size: int  # bytes, a power of two
    members: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"{SHM_DIR}/{self.name}"


@dataclass(frozen=True)
class SerialPort:
    channel: str
    vm: str
    socket: str  # the host end, a unix socket libvirt listens on
    port: str  # the virtio-serial port name the guest sees


@dataclass(frozen=True)
class VsockDevice:
    channel: str
    vm: str
    cid: int


@dataclass(frozen=True)
class ChannelPlan:
    regions: tuple[ShmRegion, ...] = ()
    serials: tuple[SerialPort, ...] = ()
    vsocks: tuple[VsockDevice, ...] = ()
    # Who the region files belong to: the user libvirt runs QEMU as
    # (HostFacts.qemu_owner); None leaves them to the user kvmctl runs as.
    owner: tuple[int, int] | None = None
    # The set's region files on this host that no channel declares any more:
    # apply removes them once the members run without them.
    stale: tuple[str, ...] = ()

    def of_vm(self, vm: str) -> ChannelPlan:
        return ChannelPlan(
            tuple(r for r in self.regions if vm in r.members),
            tuple(s for s in self.serials if s.vm == vm),
            tuple(v for v in self.vsocks if v.vm == vm),
            self.owner,
        )

    def lines(self) -> list[str]:
        """One line per channel, as `kvmctl plan` shows it."""
        out = [
            f"channel {r.channel}: shm {format_size(r.size)} at {r.path}, members "
            + ", ".join(f"{m} (rw)" for m in r.members)
            for r in self.regions
        ]
        out += [
            f"channel {s.channel}: serial, host end {s.socket}, guest port {s.port} in {s.vm}"
            for s in self.serials
        ]
        out += [f"channel {v.channel}: vsock in {v.vm}, CID {v.cid}" for v in self.vsocks]
        out += [f"region {SHM_DIR}/{name}: no longer declared, removed" for name in self.stale]
        return out

    def summary(self) -> list[dict[str, object]]:
        """As JSON-able data (one VM's share of it in its plan row)."""
        rows: list[dict[str, object]] = [
            {
                "channel": r.channel,
                "kind": "shm",
                "name": r.name,
                "size_mib": r.size // MIB,
                "members": [{"vm": m, "access": "rw"} for m in r.members],
            }
            for r in self.regions
        ]
        rows += [
            {"channel": s.channel, "kind": "serial", "vm": s.vm, "socket": s.socket, "port": s.port}
            for s in self.serials
        ]
        rows += [
            {"channel": v.channel, "kind": "vsock", "vm": v.vm, "cid": v.cid} for v in self.vsocks
        ]
        return rows

    def settings(self) -> list[list[object]] | None:
        """The VM's "channels" settings group; None (left out) without any,
        so VMs planned before channels existed keep their fingerprints."""
        found: list[list[object]] = [["shm", r.name, r.size] for r in self.regions]
        found += [["serial", s.port, s.socket] for s in self.serials]
        found += [["vsock", v.cid] for v in self.vsocks]
        return found or None


def plan_channels(
    spec: Cockpit,
    here: Collection[str],
    channel_dir: str,
    facts: HostFacts,
    live: LiveState | None = None,
) -> ChannelPlan:
    """The channels of the VMs in `here` (those planned on this host)."""
    recorded, taken = (live or LiveState()).vsock_cids(spec.name)
    vsock_vms = [c.vm for c in spec.channels if c.kind == "vsock" and c.vm]
    cids = assign_cids(spec.name, vsock_vms, recorded, taken)
    regions: list[ShmRegion] = []
    serials: list[SerialPort] = []
    vsocks: list[VsockDevice] = []
    for ch in spec.channels:
        if ch.kind == "shm" and ch.size is not None:
            members = tuple(m.vm for m in ch.members or () if m.vm in here)
            if members:
                regions.append(ShmRegion(ch.name, shmem_name(spec.name, ch.name), ch.size, members))
        elif ch.vm is not None and ch.vm in here:
            if ch.kind == "serial":
                serials.append(serial_port(channel_dir, spec.name, ch.vm, ch.name))
            else:
                vsocks.append(VsockDevice(ch.name, ch.vm, cids[ch.vm]))
    # A heartbeat is a serial channel kvmctl declares for its VM.
    serials += [
        serial_port(channel_dir, spec.name, name, HEARTBEAT_CHANNEL)
        for name, vm in spec.vms.items()
        if vm.heartbeat is not None and name in here
    ]
    planned = {r.name for r in regions}
    prefix = shmem_set_prefix(spec.name)
    stale = tuple(sorted(n for n in facts.shm_files if n.startswith(prefix) and n not in planned))
    return ChannelPlan(tuple(regions), tuple(serials), tuple(vsocks), facts.qemu_owner, stale)


def serial_port(channel_dir: str, set_name: str, vm: str, channel: str) -> SerialPort:
    """A serial channel's host end (a unix socket) and guest port name."""
    socket = f"{channel_dir}/{set_name}.{vm}.{channel}.sock"
    return SerialPort(channel, vm, socket, SERIAL_PORT_PREFIX + channel)


def region_names(spec: Cockpit, vms: Collection[str]) -> set[str]:
    """Host-wide names of the regions any of `vms` is a member of."""
    return {
        shmem_name(spec.name, ch.name)
        for ch in spec.channels
        if ch.kind == "shm" and any(m.vm in vms for m in ch.members or ())
    }


def assign_cids(
    set_name: str,
    vms: Collection[str],
    recorded: Mapping[str, int] | None = None,
    taken: Mapping[int, str] | None = None,
) -> dict[str, int]:
    """A CID per VM, unique on the host. A VM keeps the CID recorded in its
    domain's metadata (`recorded`) unless another set's domain holds it
    (`taken`); a new VM gets one from a hash of set and VM name, so a set
    applied afresh gets the same CIDs again; a collision moves it to the next
    free CID (VMs taken in name order)."""
    used = set(taken or {})
    out: dict[str, int] = {}
    for vm in sorted(set(vms)):
        cid = (recorded or {}).get(vm)
        if cid is not None and cid not in used:
            out[vm] = cid
            used.add(cid)
    span = CID_LAST - CID_FIRST + 1
    for vm in sorted(set(vms) - set(out)):
        digest = hashlib.sha256(f"kvmctl:{set_name}/{vm}".encode()).digest()
        cid = CID_FIRST + int.from_bytes(digest[:8], "big") % span
        while cid in used:
            cid = CID_FIRST + (cid - CID_FIRST + 1) % span
        used.add(cid)
        out[vm] = cid
    return out


def problems(channels: ChannelPlan, facts: HostFacts) -> list[str]:
    """What this host lacks for the channels (preflight, exit 3)."""
    found: list[str] = []
    # Region files already there (kept while the set exists) hold their space.
    new = [r for r in channels.regions if r.size > facts.shm_files.get(r.name, 0)]
    need = sum(r.size - facts.shm_files.get(r.name, 0) for r in new)
    free = facts.shm_free_bytes
    if free is not None and need > free:
        found.append(
            f"shared regions {', '.join(r.channel for r in new)} need {format_size(need)} in "
            f"{SHM_DIR}, which has {format_size(free)} free: shrink the regions, or make "
            f"{SHM_DIR} larger (mount -o remount,size=... {SHM_DIR})"
        )
    if facts.vhost_vsock is False:
        found += [
            f"vsock channel '{v.channel}' of VM '{v.vm}' needs {VHOST_VSOCK}, which this host "
            "lacks (modprobe vhost_vsock where the kernel has it); a serial channel (kind: "
            "serial) links host and guest without it"
            for v in channels.vsocks
        ]
    for s in channels.serials:
        length = len(s.socket.encode())
        if length > UNIX_PATH_MAX:
            found.append(
                f"serial channel '{s.channel}' of VM '{s.vm}': its socket {s.socket} is "
                f"{length} bytes, more than the {UNIX_PATH_MAX} a unix socket path may have "
                "(shorten the set, VM or channel name, or set KVMCTL_CHANNEL_DIR)"
            )
    return found


# QEMU's own words (hw/misc/ivshmem.c) when a member without role='master' is
# asked to migrate or to save its memory.
IVSHMEM_BLOCKER = "Migration is disabled when using feature 'peer mode' in device 'ivshmem'"


def migration_refusals(spec: Cockpit, names: Collection[str]) -> list[str]:
    """Members of a shared region cannot migrate: QEMU refuses, and the region
    lives in one host's memory, so a moved member would share with nobody."""
    return [
        f"VM '{m.vm}' is a member of shared region '{ch.name}': QEMU refuses to migrate it "
        f'("{IVSHMEM_BLOCKER}"), and the region lives in this host\'s memory; stop sharing '
        "it (remove the VM from the channel) to move the VM"
        for ch in spec.channels
        if ch.kind == "shm"
        for m in ch.members or ()
        if m.vm in names
    ]


def memory_snapshot_refusals(spec: Cockpit, names: Collection[str]) -> list[str]:
    """A snapshot with memory of a region's member fails in QEMU (the same
    ivshmem blocker as migration) after the set was paused for it: refused
    up front, with the way that works."""
    return [
        f"VM '{m.vm}' is a member of shared region '{ch.name}': QEMU cannot save its memory "
        f'("{IVSHMEM_BLOCKER}"); take a disk-only snapshot (--disk-only)'
        for ch in spec.channels
        if ch.kind == "shm"
        for m in ch.members or ()
        if m.vm in names
    ]


Device = ShmRegion | SerialPort | VsockDevice
