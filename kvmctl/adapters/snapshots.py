"""Snapshots, block commit, pause/resume and guest file-system freeze through
libvirt-python.

A thin mapping like `virt.py`: every call takes a domain name plus XML or
names from the pure layer (`kvmctl.planner.snapshot`, `kvmctl.xml.snapshot`),
and libvirt errors come out as kvmctl errors naming domain and snapshot.
A block commit is followed to its end by kvmctl.adapters.blockcommit.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from kvmctl.adapters.blockcommit import BlockCommit
from kvmctl.adapters.connection import _mapped
from kvmctl.adapters.storage import refresh_pool
from kvmctl.adapters.virt import Virt
from kvmctl.errors import ApplyError, UsageError
from kvmctl.planner.snapshot import CommitStep
from kvmctl.xml.base import parse_xml
from kvmctl.xml.snapshot import DomainSnapshot, disk_chain, disk_targets

RUNNING = libvirt.VIR_DOMAIN_RUNNING
PAUSED = libvirt.VIR_DOMAIN_PAUSED


def _pool_dir(pool_xml: str) -> str | None:
    found = parse_xml(pool_xml).find("target/path")
    return None if found is None else found.text


@dataclass(frozen=True)
class RawSnapshot:
    xml: str
    current: bool


class SnapshotOps:
    def __init__(self, virt: Virt):
        self.virt = virt

    @property
    def conn(self) -> libvirt.virConnect:
        return self.virt.conn  # Virt may have reconnected since

    def _dom(self, domain: str) -> libvirt.virDomain:
        dom = self.virt.lookup(domain)
        if dom is None:
            raise UsageError(f"domain '{domain}' does not exist: create it with `kvmctl apply`")
        return dom

    # --- state ---------------------------------------------------------------------

    def exists(self, domain: str) -> bool:
        return self.virt.lookup(domain) is not None

    def state(self, domain: str) -> int:
        with _mapped(f"cannot read the state of domain '{domain}'"):
            return int(self._dom(domain).state()[0])

    def xml(self, domain: str, inactive: bool = False) -> str:
        return self.virt.xml(domain, inactive=inactive)

    # --- snapshots -----------------------------------------------------------------

    def snapshots(self, domain: str) -> list[RawSnapshot]:
        dom = self._dom(domain)
        out = []
        with _mapped(f"cannot list the snapshots of domain '{domain}'"):
            for snap in dom.listAllSnapshots(0):
                try:
                    out.append(RawSnapshot(snap.getXMLDesc(0), snap.isCurrent(0) == 1))
                except libvirt.libvirtError as err:
                    if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                        raise
        return out

    def create(
        self, domain: str, snapshot: DomainSnapshot, disk_only: bool, reuse: bool = False
    ) -> None:
        """`reuse`: the overlay files exist already (see `precreate_overlay`),
        so libvirt only opens them: the quick path while VMs are paused."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
        if disk_only:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        if reuse:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        with _mapped(f"cannot take snapshot '{snapshot.name}' of domain '{domain}'"):
            self._dom(domain).snapshotCreateXML(snapshot.to_xml(), flags)

    def revert_paused(self, domain: str, name: str, force: bool = False) -> None:
        """Revert to an internal snapshot and leave the domain paused, whatever
        state the snapshot recorded: the caller resumes it when its turn comes.
        `force` lets libvirt replace a running QEMU whose definition changed."""
        dom = self._dom(domain)
        self.virt.ensure_log_dirs(self.virt.xml(domain, inactive=True))
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED
        if force:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_FORCE
        with _mapped(f"cannot revert domain '{domain}' to snapshot '{name}'"):
            snap = dom.snapshotLookupByName(name, 0)
            dom.revertToSnapshot(snap, flags)

    def delete(self, domain: str, name: str, metadata_only: bool = False) -> None:
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY if metadata_only else 0
        dom = self.virt.lookup(domain)
        if dom is None:
            return
        try:
            snap = dom.snapshotLookupByName(name, 0)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT:
                return
            raise ApplyError(f"cannot find snapshot '{name}' of '{domain}': {err}") from None
        with _mapped(f"cannot delete snapshot '{name}' of domain '{domain}'"):
            snap.delete(flags)

    # --- pause / resume --------------------------------------------------------------

    def suspend(self, domain: str) -> None:
        with _mapped(f"cannot pause domain '{domain}'"):
            self._dom(domain).suspend()

    def resume(self, domain: str) -> None:
        """Resume if paused; a domain already running is left alone."""
        dom = self._dom(domain)
        with _mapped(f"cannot resume domain '{domain}'"):
            if dom.state()[0] == PAUSED:
                dom.resume()

    # --- guest agent -------------------------------------------------------------------

    def freeze(self, domain: str) -> int:
        """Freeze the guest's file systems (guest-fsfreeze-freeze); how many."""
        with _mapped(f"cannot freeze the file systems of domain '{domain}' (guest agent)"):
            return int(self._dom(domain).fsFreeze(None, 0))

    def thaw(self, domain: str) -> int:
        with _mapped(f"cannot thaw the file systems of domain '{domain}' (guest agent)"):
            return int(self._dom(domain).fsThaw(None, 0))

    def ping(self, domain: str, timeout: int = 1) -> bool:
        dom = self.virt.lookup(domain)
        if dom is None:
            return False
        try:
            libvirt_qemu.qemuAgentCommand(dom, json.dumps({"execute": "guest-ping"}), timeout, 0)
        except libvirt.libvirtError:
            return False
        return True

    def set_guest_clock(self, domain: str) -> float:
        """Set the guest's clock to this host's through the agent
        (guest-set-time); a restored guest's clock stands where it was saved.
        Returns the guest's time minus the host's afterwards, in seconds.
        The agent also writes the guest's RTC (hwclock), which a guest
        without one refuses: the system clock is set before that, so the
        offset read back decides."""
        dom = self._dom(domain)

        def agent(command: str, arguments: dict[str, int] | None = None) -> object:
            payload: dict[str, object] = {"execute": command}
            if arguments:
                payload["arguments"] = arguments
            reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(payload), 10, 0)
            try:
                return json.loads(reply).get("return")
            except (ValueError, AttributeError):
                raise ApplyError(
                    f"the guest agent of domain '{domain}' answered {reply!r}"
                ) from None

        with _mapped(f"cannot set the clock of domain '{domain}' (guest agent)"):
            try:
                agent("guest-set-time", {"time": time.time_ns()})
            except libvirt.libvirtError as err:
                if "hwclock" not in str(err):
                    raise
            guest_ns = agent("guest-get-time")
        if not isinstance(guest_ns, int):
            raise ApplyError(f"the guest agent of domain '{domain}' gave no time: {guest_ns!r}")
        return guest_ns / 1e9 - time.time()

    def wait_agent(self, domain: str, timeout: float) -> float:
        """Until the guest agent answers (it reconnects after a revert); the
        monotonic time it did. Fails at once if the domain stops."""
        deadline = time.monotonic() + timeout
        while True:
            if self.ping(domain):
                return time.monotonic()
            if self.state(domain) not in (RUNNING, PAUSED):
                raise ApplyError(f"domain '{domain}' stopped while waiting for its guest agent")
            if time.monotonic() > deadline:
                raise ApplyError(
                    f"the guest agent of domain '{domain}' did not answer within {timeout:g} s"
                )
            time.sleep(0.05)

    # --- block commit --------------------------------------------------------------------

    def commit(self, domain: str, step: CommitStep, timeout: float = 600) -> None:
        """Merge `step.top` into `step.base` (kvmctl.adapters.blockcommit)."""
        BlockCommit(self.conn, self._dom(domain), domain).run(step, timeout)

    # --- images --------------------------------------------------------------------------

    def disks(self, domain: str) -> tuple[str, ...]:
        return disk_targets(self.xml(domain, inactive=True))

    def active_image(self, domain: str, disk: str) -> str:
        """Path of the image disk `disk` writes to now (the top of its chain)."""
        chain = disk_chain(self.xml(domain), disk)
        if not chain:
            raise ApplyError(f"domain '{domain}' has no disk {disk}")
        top = chain[0]
        if top.file:
            return top.file
        assert top.pool and top.volume
        return self.volume_path(top.pool, top.volume)

    def volume_capacity(self, pool: str, volume: str) -> int:
        with _mapped(f"cannot read the size of volume '{volume}' in pool '{pool}'"):
            vol = self.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume)
            return int(vol.info()[1])

    def precreate_overlay(self, pool: str, volume_xml: str) -> None:
        """Create an empty qcow2 overlay in `pool` (libvirt's storage driver
        writes the backing file into its header)."""
        with self.virt._storage, _mapped(f"cannot create an overlay in pool '{pool}'"):
            self.conn.storagePoolLookupByName(pool).createXML(volume_xml, 0)

    def volume_path(self, pool: str, volume: str) -> str:
        with _mapped(f"cannot find volume '{volume}' in pool '{pool}'"):
            return str(
                self.conn.storagePoolLookupByName(pool).storageVolLookupByName(volume).path()
            )

    def _volume_by_path(self, path: str) -> libvirt.virStorageVol | None:
        for refresh in (False, True):
            if refresh:
                with self.virt._storage:  # one storage call at a time (see Virt)
                    for pool in self.conn.listAllStoragePools(
                        libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE
                    ):
                        try:
                            if _pool_dir(pool.XMLDesc(0)) == os.path.dirname(path):
                                refresh_pool(pool)
                        except (libvirt.libvirtError, ValueError):
                            pass
            try:
                return self.conn.storageVolLookupByPath(path)
            except libvirt.libvirtError:
                continue
        return None

    def file_size(self, path: str) -> int | None:
        """Bytes allocated to an image file that lives in a storage pool."""
        vol = self._volume_by_path(path)
        if vol is None:
            return None
        try:
            return int(vol.info()[2])
        except libvirt.libvirtError:
            return None

    def delete_file(self, path: str) -> bool:
        """Delete an overlay through its storage pool; False if no pool holds it."""
        vol = self._volume_by_path(path)
        if vol is None:
            return False
        with self.virt._storage, _mapped(f"cannot delete overlay {path}"):
            vol.delete(0)
        return True

    def owned_images(self, domain: str) -> tuple[list[tuple[str, str]], list[str]]:
        """What destroying `domain` must delete beyond its listed disk volumes:
        pool volumes anywhere in its disks' backing chains (kvmctl's data volume
        sits below an overlay after a disk-only snapshot) and the overlay files
        its external snapshots made. Files kvmctl did not make (a cloud image
        below the data volume) are never listed."""
        volumes: list[tuple[str, str]] = []
        files: list[str] = []
        dom = self.virt.lookup(domain)
        if dom is None:
            return volumes, files
        xmls = [self.xml(domain, inactive=True)]
        if dom.isActive():
            xmls.append(self.xml(domain))
        for text in xmls:
            for target in disk_targets(text):
                for layer in disk_chain(text, target):
                    if layer.pool and layer.volume and (layer.pool, layer.volume) not in volumes:
                        volumes.append((layer.pool, layer.volume))
        for raw in self.snapshots(domain):
            for disk in DomainSnapshot.from_xml(raw.xml).disks:
                if disk.snapshot == "external" and disk.source_file:
                    if disk.source_file not in files:
                        files.append(disk.source_file)
        return volumes, files
