"""The engine every XML model shares: where a field's declared path (base.py)
lands in the element, written and read by one pair of functions so reading
can never drift from writing.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lxml import etree

from kvmctl.xml.convert import rescale

if TYPE_CHECKING:
    from kvmctl.xml.base import Prop


def claimed_tags(props: tuple[tuple[str, Prop], ...]) -> frozenset[str]:
    tags: set[str] = set()
    for _, prop in props:
        segs = prop.segments
        if segs and not segs[0].startswith("@"):
            tags.add(segs[0])
        elif prop.kind in ("child", "children"):
            tags.add(prop.child_tag)
    return frozenset(tags)


def _find(el: Any, segs: list[str]) -> Any:
    for seg in segs:
        el = next(el.iterchildren(seg), None)
        if el is None:
            return None
    return el


def _ensure(el: Any, segs: list[str]) -> Any:
    for seg in segs:
        found = next(el.iterchildren(seg), None)
        el = etree.SubElement(el, seg) if found is None else found
    return el


def write(el: Any, prop: Prop, val: Any) -> None:
    segs = prop.segments
    if prop.kind == "value":
        if val is None:
            return
        text = prop.conv.format(val)
        if segs and segs[-1].startswith("@"):
            holder = _ensure(el, segs[:-1])
            holder.set(segs[-1][1:], text)
        else:
            holder = _ensure(el, segs)
            holder.text = text
        if prop.unit:
            holder.set("unit", prop.unit)
    elif prop.kind == "values":
        attr = segs[-1][1:] if segs[-1].startswith("@") else None
        tag_at = -2 if attr else -1
        parent = _ensure(el, segs[:tag_at]) if val else None
        for item in val:
            repeated = etree.SubElement(parent, segs[tag_at])
            if attr:
                repeated.set(attr, prop.conv.format(item))
            else:
                repeated.text = prop.conv.format(item)
    elif prop.kind == "flag":
        if val:
            _ensure(el, segs)
    elif prop.kind == "child":
        if val is not None:
            _ensure(el, segs).append(val.to_element(prop.tag))
    elif prop.kind == "children":
        if val is None or (not val and not (segs and prop.keep_empty)):
            return
        parent = _ensure(el, segs)
        for item in val:
            parent.append(item.to_element(prop.tag))
    else:
        for xml in val:
            el.append(etree.fromstring(xml))


def read(el: Any, prop: Prop, claimed: frozenset[str]) -> Any:
    segs = prop.segments
    if prop.kind == "value":
        if segs and segs[-1].startswith("@"):
            holder = _find(el, segs[:-1])
            raw = None if holder is None else holder.get(segs[-1][1:])
        else:
            holder = _find(el, segs)
            # An element without text counts as absent, as libvirt treats it.
            raw = None if holder is None else holder.text
        if raw is None:
            return dataclasses.MISSING
        parsed = prop.conv.parse(raw)
        if prop.unit:
            parsed = rescale(parsed, holder.get("unit", prop.unit), prop.unit)
        return parsed
    if prop.kind == "values":
        attr = segs[-1][1:] if segs[-1].startswith("@") else None
        tag_at = -2 if attr else -1
        parent = _find(el, segs[:tag_at])
        if parent is None:
            return dataclasses.MISSING
        return tuple(
            prop.conv.parse(c.get(attr, "") if attr else (c.text or ""))
            for c in parent.iterchildren(segs[tag_at])
        )
    if prop.kind == "flag":
        return _find(el, segs) is not None
    if prop.kind == "unclaimed":
        return tuple(
            etree.tostring(c, encoding="unicode", with_tail=False)
            for c in el.iterchildren(etree.Element)
            if c.tag not in claimed
        )
    assert prop.model is not None
    parent = _find(el, segs)
    if parent is None:
        return dataclasses.MISSING
    found = [prop.model.from_element(c, prop.tag) for c in parent.iterchildren(prop.child_tag)]
    if prop.kind == "child":
        return found[0] if found else dataclasses.MISSING
    return tuple(found)
