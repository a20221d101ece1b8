"""``<domainsnapshot>`` and the disk backing chain a snapshot leaves behind.

Small frozen dataclasses with ``to_xml()`` / ``from_xml()`` built on lxml, so
names, descriptions and paths are always escaped by the serializer, never
pasted into markup. Only the parts kvmctl writes or reads are modelled:
what libvirt adds (the full ``<domain>`` copy, cookies) is left out on read.

    snap = DomainSnapshot(
        name="before-update",
        description="note <with> & markup",
        disks=(SnapshotDisk(name="vda", snapshot="external",
                            source_file="/pool/demo-a-data.before-update.qcow2"),),
        memory="no",
    )
    assert DomainSnapshot.from_xml(snap.to_xml()) == snap
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from lxml import etree

from kvmctl.xml.base import parse_xml
from kvmctl.xml.names import check_name

SnapshotKind = Literal["internal", "external", "no", "manual"]
_KINDS = ("internal", "external", "no", "manual")

# Snapshot names end up in file names (overlays, manifests), libvirt metadata
# file names and command lines people copy: a conservative set only.
SNAPSHOT_NAME_MAX = 64
_DISK_TARGET = re.compile(r"[a-z]{2,4}[a-z0-9]*")


def validate_snapshot_name(name: object) -> str:
    """Return `name` if kvmctl accepts it as a snapshot (or group) name."""
    return check_name("snapshot", name, SNAPSHOT_NAME_MAX)


def _check_path(path: str) -> str:
    if not path.startswith("/") or any(ord(c) < 32 for c in path):
        raise ValueError(f"{path!r} must be an absolute path without control characters")
    return path


def _sub(parent: Any, tag: str, text: str | None = None, **attrs: str) -> Any:
    el = etree.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _child_text(el: Any, tag: str) -> str | None:
    found = next(el.iterchildren(tag), None)
    return None if found is None else found.text


@dataclass(frozen=True)
class SnapshotDisk:
    """One disk of a snapshot: ``internal`` (inside the qcow2 file), ``external``
    (a new overlay file ``source_file`` takes the writes from then on) or ``no``."""

    name: str
    snapshot: SnapshotKind
    source_file: str | None = None
    driver_type: Literal["qcow2", "raw"] | None = None

    def __post_init__(self) -> None:
        if not _DISK_TARGET.fullmatch(self.name):
            raise ValueError(f"snapshot disk {self.name!r} is not a disk target such as 'vda'")
        if self.snapshot not in _KINDS:
            raise ValueError(f"snapshot disk {self.name}: kind {self.snapshot!r} is unknown")
        if self.source_file is not None:
            _check_path(self.source_file)
            if self.snapshot != "external":
                raise ValueError(f"snapshot disk {self.name}: only an external one has a file")

    def to_element(self) -> Any:
        attrs = {"name": self.name, "snapshot": self.snapshot}
        if self.source_file is not None:
            attrs["type"] = "file"
        el = etree.Element("disk", attrs)
        if self.driver_type is not None:
            _sub(el, "driver", type=self.driver_type)
        if self.source_file is not None:
            _sub(el, "source", file=self.source_file)
        return el

    @classmethod
    def from_element(cls, el: Any) -> SnapshotDisk:
        driver = next(el.iterchildren("driver"), None)
        source = next(el.iterchildren("source"), None)
        driver_type = None if driver is None else driver.get("type")
        return cls(
            name=el.get("name", ""),
            snapshot=el.get("snapshot", "no"),
            source_file=None if source is None else source.get("file"),
            driver_type=driver_type if driver_type in ("qcow2", "raw") else None,
        )


@dataclass(frozen=True)
class DomainSnapshot:
    """What kvmctl asks libvirt for, and what it reads back from a snapshot.

    ``state``, ``creation_time`` and ``parent`` are filled in by libvirt and
    never written; ``memory`` is ``internal`` for a snapshot with the guest's
    RAM and ``no`` for a disk-only one."""

    name: str
    description: str | None = None
    memory: SnapshotKind | None = None
    disks: tuple[SnapshotDisk, ...] = ()
    state: str | None = None
    creation_time: int | None = None
    parent: str | None = None

    def __post_init__(self) -> None:
        validate_snapshot_name(self.name)
        if self.memory is not None and self.memory not in _KINDS:
            raise ValueError(f"snapshot {self.name}: memory kind {self.memory!r} is unknown")
        if self.description is not None and "\x00" in self.description:
            raise ValueError(f"snapshot {self.name}: description contains a NUL character")

    def to_element(self) -> Any:
        el = etree.Element("domainsnapshot")
        _sub(el, "name", self.name)
        if self.description is not None:
            _sub(el, "description", self.description)
        if self.memory is not None:
            _sub(el, "memory", snapshot=self.memory)
        if self.disks:
            disks = _sub(el, "disks")
            for disk in self.disks:
                disks.append(disk.to_element())
        return el

    def to_xml(self) -> str:
        text: str = etree.tostring(self.to_element(), pretty_print=True, encoding="unicode")
        return text

    @classmethod
    def from_element(cls, el: Any) -> DomainSnapshot:
        if el.tag != "domainsnapshot":
            raise ValueError(f"expected <domainsnapshot>, got <{el.tag}>")
        memory = next(el.iterchildren("memory"), None)
        disks = next(el.iterchildren("disks"), None)
        parent = next(el.iterchildren("parent"), None)
        created = _child_text(el, "creationTime")
        return cls(
            name=_child_text(el, "name") or "",
            description=_child_text(el, "description"),
            memory=None if memory is None else memory.get("snapshot"),
            disks=()
            if disks is None
            else tuple(SnapshotDisk.from_element(d) for d in disks.iterchildren("disk")),
            state=_child_text(el, "state"),
            creation_time=int(created) if created and created.strip().isdigit() else None,
            parent=None if parent is None else _child_text(parent, "name"),
        )

    @classmethod
    def from_xml(cls, text: str) -> DomainSnapshot:
        return cls.from_element(parse_xml(text))

    @property
    def has_memory(self) -> bool:
        return self.memory in ("internal", "external")

    @property
    def kind(self) -> Literal["internal", "external"]:
        """External when any disk went to an overlay file; internal otherwise."""
        if self.memory == "external" or any(d.snapshot == "external" for d in self.disks):
            return "external"
        return "internal"


@dataclass(frozen=True)
class ChainLayer:
    """One image of a disk's backing chain as the live domain XML shows it:
    a file, or a pool volume. ``index`` is libvirt's, for ``vda[index]``."""

    index: int | None
    file: str | None = None
    pool: str | None = None
    volume: str | None = None

    @property
    def label(self) -> str:
        return self.file or f"{self.pool}/{self.volume}"


def _layer(el: Any, index_from: Any) -> ChainLayer | None:
    source = next(el.iterchildren("source"), None)
    if source is None:
        return None
    raw = source.get("index") or index_from.get("index")
    return ChainLayer(
        index=int(raw) if raw and raw.isdigit() else None,
        file=source.get("file") or source.get("dev"),
        pool=source.get("pool"),
        volume=source.get("volume"),
    )


def disk_chain(domain_xml: str, target: str) -> tuple[ChainLayer, ...]:
    """The backing chain of disk `target`, active image first, base last."""
    root = parse_xml(domain_xml)
    devices = next(root.iterchildren("devices"), None)
    if devices is None:
        return ()
    for disk in devices.iterchildren("disk"):
        tgt = next(disk.iterchildren("target"), None)
        if tgt is None or tgt.get("dev") != target:
            continue
        chain: list[ChainLayer] = []
        top = _layer(disk, disk)
        if top is not None:
            chain.append(top)
        node = next(disk.iterchildren("backingStore"), None)
        while node is not None:
            layer = _layer(node, node)
            if layer is None:
                break
            chain.append(layer)
            node = next(node.iterchildren("backingStore"), None)
        return tuple(chain)
    return ()


def disk_targets(domain_xml: str) -> tuple[str, ...]:
    """Target names of the domain's writable disks (not cdroms, not read-only)."""
    root = parse_xml(domain_xml)
    devices = next(root.iterchildren("devices"), None)
    out: list[str] = []
    for disk in () if devices is None else devices.iterchildren("disk"):
        readonly = next(disk.iterchildren("readonly"), None) is not None
        if disk.get("device", "disk") != "disk" or readonly:
            continue
        tgt = next(disk.iterchildren("target"), None)
        if tgt is not None and tgt.get("dev"):
            out.append(tgt.get("dev"))
    return tuple(out)
