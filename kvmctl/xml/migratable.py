"""The destination XML for a migration (pure).

libvirt checks that the destination definition keeps the guest ABI (devices,
addresses, machine type), so the source's migratable XML is kept whole and
only what belongs to the destination host is replaced: the vCPU cpuset, the
<cputune> pins and the kvmctl metadata that records them.
"""

from __future__ import annotations

from typing import Any

from lxml import etree

from kvmctl.xml.base import parse_xml
from kvmctl.xml.domain import Domain
from kvmctl.xml.metadata import KVMCTL_NS

# Elements of <domain> that are per host, in the order they appear.
HOST_ELEMENTS = ("vcpu", "cputune")


def retarget(source_xml: str, planned: Domain) -> str:
    """`source_xml` with the host-specific parts taken from `planned`."""
    root = parse_xml(source_xml)
    new = planned.to_element()
    for tag in HOST_ELEMENTS:
        _replace(root, new, tag)
    _replace_metadata(root, new)
    return str(etree.tostring(root, encoding="unicode"))


def _replace(root: Any, new: Any, tag: str) -> None:
    replacement = new.find(tag)
    current = root.find(tag)
    if current is not None and replacement is not None:
        root.replace(current, replacement)
    elif current is not None:
        root.remove(current)
    elif replacement is not None:
        # cputune follows vcpu (and iothreads) in libvirt's schema order.
        anchor = root.find("iothreads")
        anchor = anchor if anchor is not None else root.find("vcpu")
        if anchor is None:
            root.append(replacement)
        else:
            anchor.addnext(replacement)


def _replace_metadata(root: Any, new: Any) -> None:
    ours = new.find(f"metadata/{{{KVMCTL_NS}}}cockpit")
    metadata = root.find("metadata")
    if ours is None:
        return
    if metadata is None:
        metadata = etree.SubElement(root, "metadata")
        title = root.find("description")
        if title is None:
            title = root.find("title")
        if title is not None:
            title.addnext(metadata)
    old = metadata.find(f"{{{KVMCTL_NS}}}cockpit")
    if old is not None:
        metadata.replace(old, ours)
    else:
        metadata.append(ours)
