"""Storage pools and volumes through libvirt-python: pools made and removed,
volumes created, uploaded, read back and deleted by pool and volume name.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from pathlib import Path

import libvirt
from lxml import etree

from kvmctl.adapters.connection import Connection, _mapped
from kvmctl.errors import ApplyError, HostError
from kvmctl.planner.hosts import is_remote

# How long a refresh waits out another process's volume job in the same pool.
REFRESH_WAIT = 60.0


def refresh_pool(pool: libvirt.virStoragePool, wait: float = REFRESH_WAIT) -> None:
    """Refresh a pool, waiting while libvirt refuses because a volume job is
    running in it ("pool '...' has asynchronous jobs running"): another kvmctl
    run, or any other libvirt client, creating a volume in the same pool. The
    lock in `Storage` covers this process only."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as err:
            busy = "asynchronous jobs running" in (err.get_error_message() or "")
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


class Storage(Connection):
    """Pool and volume calls on one connection (kvmctl.adapters.virt.Virt adds
    the domain calls)."""

    def __init__(self, conn: libvirt.virConnect):
        super().__init__(conn)
        # libvirt refuses to refresh a pool while a volume is being created in
        # it ("asynchronous jobs running"): storage calls go one at a time.
        self._storage = threading.RLock()

    def ensure_pool(self, xml: str, name: str) -> bool:
        """Define, build, start and autostart a dir pool if missing. True if created."""
        pool = self._pool(name)
        created = False
        with _mapped(f"cannot set up storage pool '{name}'", HostError):
            if pool is None:
                try:
                    pool = self.conn.storagePoolDefineXML(xml, 0)
                except libvirt.libvirtError:
                    # Another run on this host defined it a moment ago, and may
                    # not have made its directory yet.
                    pool = self._pool(name)
                    if pool is None:
                        raise
                    with contextlib.suppress(libvirt.libvirtError):
                        pool.build(libvirt.VIR_STORAGE_POOL_BUILD_NO_OVERWRITE)
                else:
                    pool.build(0)
                    created = True
            elif self._pool_dir_gone(pool):
                # Its directory was removed behind libvirt's back: every volume
                # call would fail with "No such file or directory". libvirt
                # builds (makes the directory of) inactive pools only.
                if pool.isActive():
                    pool.destroy()
                pool.build(0)
            if not pool.isActive():
                try:
                    pool.create(0)
                except libvirt.libvirtError:
                    if not pool.isActive():  # else another run started it meanwhile
                        raise
            pool.setAutostart(1)
        return created

    def _pool(self, name: str) -> libvirt.virStoragePool | None:
        try:
            return self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return None

    def _pool_dir_gone(self, pool: libvirt.virStoragePool) -> bool:
        if self.uri is None or is_remote(self.uri):
            return False
        target = etree.fromstring(pool.XMLDesc(0).encode()).findtext("target/path")
        return target is not None and not Path(target).is_dir()

    def remove_pool(self, name: str) -> None:
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            return
        with _mapped(f"cannot remove storage pool '{name}'"):
            if pool.isActive():
                pool.destroy()
            pool.undefine()

    def volume_exists(self, pool: str, name: str) -> bool:
        with self._storage:
            return self._volume(pool, name) is not None

    def volume_capacity(self, pool: str, name: str) -> int | None:
        with self._storage:
            vol = self._volume(pool, name)
            return None if vol is None else int(vol.info()[1])

    def pool_xml(self, name: str) -> str | None:
        """The pool's definition without its UUID (to define it elsewhere)."""
        try:
            xml = self.conn.storagePoolLookupByName(name).XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
        except libvirt.libvirtError:
            return None
        root = etree.fromstring(xml.encode())
        for node in root.findall("uuid"):
            root.remove(node)
        return str(etree.tostring(root, encoding="unicode"))

    def pool_available(self, name: str) -> int | None:
        """Free bytes in an active pool; None when there is no such pool."""
        try:
            pool = self.conn.storagePoolLookupByName(name)
            return int(pool.info()[3]) if pool.isActive() else 0
        except libvirt.libvirtError:
            return None

    def _volume(self, pool: str, name: str) -> libvirt.virStorageVol | None:
        try:
            p = self.conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                return None  # no pool, no volume
            raise ApplyError(f"cannot look up pool '{pool}': {err.get_error_message()}") from None
        # A file made outside libvirt (or by a killed run) shows after a
        # refresh; so does one deleted by another host's libvirtd on shared
        # storage, which this pool still lists until then.
        for refresh in (False, True):
            if refresh:
                with _mapped(f"cannot refresh storage pool '{pool}'"):
                    refresh_pool(p)
            try:
                vol = p.storageVolLookupByName(name)
                if not refresh:
                    vol.info()  # stats the file: fails for a listed file that is gone
                return vol
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL or not refresh:
                    continue  # not listed, or listed but gone: look after a refresh
                raise ApplyError(
                    f"cannot look up volume '{name}' in pool '{pool}': {err.get_error_message()}"
                ) from None
        return None

    def create_volume(self, pool: str, xml: str) -> None:
        with self._storage, _mapped(f"cannot create a volume in pool '{pool}'"):
            self.conn.storagePoolLookupByName(pool).createXML(xml, 0)

    def upload_volume(self, pool: str, xml: str, data: bytes) -> None:
        """Create a volume and fill it with `data` through libvirt's stream
        upload, which works the same on a remote host."""
        with self._storage, _mapped(f"cannot create a volume in pool '{pool}'"):
            vol = self.conn.storagePoolLookupByName(pool).createXML(xml, 0)
        stream = self.conn.newStream(0)
        with _mapped(f"cannot upload to volume '{vol.name()}' in pool '{pool}'"):
            vol.upload(stream, 0, len(data), 0)
            stream.sendAll(lambda _st, nbytes, buf: buf.read(nbytes), io.BytesIO(data))
            stream.finish()

    def download_volume(self, pool: str, name: str) -> bytes:
        vol = self._volume(pool, name)
        if vol is None:
            raise ApplyError(f"volume '{name}' of pool '{pool}' does not exist")
        stream = self.conn.newStream(0)
        chunks: list[bytes] = []
        with _mapped(f"cannot read volume '{name}' of pool '{pool}'"):
            vol.download(stream, 0, 0, 0)
            stream.recvAll(lambda _st, data, buf: buf.append(data), chunks)
            stream.finish()
        return b"".join(chunks)

    def delete_volume(self, pool: str, name: str) -> None:
        with self._storage:
            vol = self._volume(pool, name)
            if vol is None:
                return
            with _mapped(f"cannot delete volume '{name}' of pool '{pool}'"):
                vol.delete(0)
