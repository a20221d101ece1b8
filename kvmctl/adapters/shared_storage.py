"""Does the destination see the same files as a storage pool here (NFS-like
shared storage)?

Decided by a marker, as OpenStack Nova decides whether its instances
directory is shared before a live migration: a uniquely named file made on
one host is looked for on the other. A same-named volume of the same size is
no proof (a copy left from an earlier run looks just like it). Both hosts are
reached through libvirt only, as the destination may be another machine: the
marker is an empty volume made in the pool here and looked for, after a
refresh, in the destination's pool of the same name, or in a transient pool
over the same directory when the destination has no such pool yet.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import libvirt
from lxml import etree

from kvmctl.adapters.storage import refresh_pool
from kvmctl.adapters.virt import Virt

MARKER_PREFIX = ".kvmctl-shared-"


@dataclass(frozen=True)
class Sharing:
    pool: str
    shared: bool
    problem: str | None = None  # could not tell, or shared under another pool name


def probe(source: Virt, dest: Virt, pool: str) -> Sharing:
    marker = MARKER_PREFIX + secrets.token_hex(8)
    try:
        here = source.conn.storagePoolLookupByName(pool)
        vol = here.createXML(_marker_xml(marker), 0)
    except libvirt.libvirtError as err:
        return Sharing(pool, False, f"cannot tell whether pool '{pool}' is shared: {_msg(err)}")
    try:
        return _look(dest.conn, pool, here.XMLDesc(0), marker)
    except libvirt.libvirtError as err:
        return Sharing(pool, False, f"cannot tell whether pool '{pool}' is shared: {_msg(err)}")
    finally:
        try:
            vol.delete(0)
        except libvirt.libvirtError:
            pass  # a stray empty marker; the next probe uses another name


def _look(conn: libvirt.virConnect, pool: str, pool_xml: str, marker: str) -> Sharing:
    try:
        there = conn.storagePoolLookupByName(pool)
    except libvirt.libvirtError:
        there = None
    if there is not None:
        if not there.isActive():
            there.create(0)  # as the move would (kvmctl's pools autostart)
        return Sharing(pool, _sees(there, marker))
    path = _target_path(pool_xml)
    try:
        other = conn.storagePoolLookupByTargetPath(path)
    except libvirt.libvirtError:
        other = None
    if other is not None:
        if other.isActive() and _sees(other, marker):
            return Sharing(
                pool,
                True,
                f"the destination has the shared directory {path} as pool '{other.name()}', "
                f"not '{pool}': rename one of them",
            )
        return Sharing(pool, False)
    try:
        transient = conn.storagePoolCreateXML(_probe_pool_xml(pool_xml), 0)
    except libvirt.libvirtError:
        return Sharing(pool, False)  # no such directory there
    try:
        return Sharing(pool, _sees(transient, marker))
    finally:
        try:
            transient.destroy()  # a transient pool is gone with it
        except libvirt.libvirtError:
            pass


def _sees(pool: libvirt.virStoragePool, marker: str) -> bool:
    refresh_pool(pool)
    try:
        pool.storageVolLookupByName(marker)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return False
        raise
    return True


def _marker_xml(name: str) -> str:
    vol = etree.Element("volume")
    etree.SubElement(vol, "name").text = name
    etree.SubElement(vol, "capacity").text = "0"
    etree.SubElement(etree.SubElement(vol, "target"), "format", type="raw")
    return str(etree.tostring(vol, encoding="unicode"))


def _target_path(pool_xml: str) -> str:
    return etree.fromstring(pool_xml.encode()).findtext("target/path") or ""


def _probe_pool_xml(pool_xml: str) -> str:
    root = etree.fromstring(pool_xml.encode())
    for node in root.findall("uuid"):
        root.remove(node)
    name = root.find("name")
    if name is None:
        raise ValueError("storage pool XML without a <name>")
    name.text = "kvmctl-probe-" + secrets.token_hex(4)
    return str(etree.tostring(root, encoding="unicode"))


def _msg(err: libvirt.libvirtError) -> str:
    return (err.get_error_message() or "unknown error").strip()
