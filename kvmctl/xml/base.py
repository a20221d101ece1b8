"""Declarative core of the XML model.

Every model is a frozen dataclass; each field declares once, as a small
XPath-like path, where its value lives in the element. One generic engine
then writes and reads all models, so a block of XML costs a dozen lines and
reading can never drift from writing.

Paths: ``"@type"`` is an attribute of the model's own element, ``"driver/@io"``
an attribute of a child (created on demand, reused by sibling fields),
``"name"`` the text of a child, ``"."`` the element's own text. A segment may
be namespaced in Clark notation, ``"{uri}name"``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, Union, dataclass_transform

from lxml import etree

from kvmctl.xml.convert import STR, Converter, rescale

PROP_KEY = "kvmctl.xml.prop"
Kind = Literal["value", "values", "flag", "child", "children", "unclaimed"]
# A namespace URI may contain "/", so a segment is an optional {uri} plus a name.
_SEGMENT = re.compile(r"(?:\{[^}]*\})?[^/{}]+")


@dataclass(frozen=True)
class Prop:
    """Where one dataclass field lives in the XML, and how it is converted."""

    kind: Kind
    path: str = ""
    conv: Converter[Any] = STR
    model: type[XMLModel] | None = None
    unit: str | None = None
    tag: str | None = None
    keep_empty: bool = False

    @property
    def segments(self) -> list[str]:
        return [s for s in _SEGMENT.findall(self.path) if s != "."]

    @property
    def child_tag(self) -> str:
        assert self.model is not None
        return self.tag or self.model.TAG


def value(
    path: str,
    conv: Converter[Any] = STR,
    *,
    unit: str | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A scalar held in an attribute (``@name``) or an element's text.

    With `unit`, the holding element carries ``unit=`` and values read in any
    other unit are rescaled, since libvirt accepts sizes in many units.
    """
    return dataclasses.field(
        default=default, metadata={PROP_KEY: Prop("value", path, conv, unit=unit)}
    )


def values(path: str, conv: Converter[Any] = STR, *, default: Any = ()) -> Any:
    """A tuple of scalars, one repeated element each: ``values("boot/@dev")``
    reads and writes ``<boot dev='hd'/><boot dev='cdrom'/>``."""
    return dataclasses.field(default=default, metadata={PROP_KEY: Prop("values", path, conv)})


def flag(path: str, *, default: Any = False) -> Any:
    """A boolean that is true when the (usually empty) element is present."""
    return dataclasses.field(default=default, metadata={PROP_KEY: Prop("flag", path)})


def child(
    model: type[XMLModel],
    path: str = "",
    *,
    tag: str | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """One nested model, optionally below the wrapper element `path`."""
    return dataclasses.field(
        default=default, metadata={PROP_KEY: Prop("child", path, model=model, tag=tag)}
    )


def children(
    model: type[XMLModel],
    path: str = "",
    *,
    tag: str | None = None,
    default: Any = dataclasses.MISSING,
) -> Any:
    """A tuple of nested models, optionally inside the wrapper element `path`.

    With ``default=None`` and a wrapper, None means "no wrapper" and () an
    empty one, a distinction libvirt makes (``<hugepages/>``); otherwise an
    empty tuple writes nothing.
    """
    prop = Prop("children", path, model=model, tag=tag, keep_empty=default is None)
    return dataclasses.field(default=default, metadata={PROP_KEY: prop})


def unclaimed(*, default: Any = ()) -> Any:
    """Child elements no other field claims, kept verbatim as XML strings so
    foreign data (other tools' metadata) survives a read-modify-write."""
    return dataclasses.field(default=default, metadata={PROP_KEY: Prop("unclaimed")})


@dataclass_transform(
    frozen_default=True,
    kw_only_default=True,
    # values(), flag() and unclaimed() always carry a default, so they are left out:
    # type checkers then treat them as defaulted instead of required.
    field_specifiers=(value, child, children),
)
class XMLModel:
    """Base of every model: ``class Foo(XMLModel, tag="foo")`` makes a frozen,
    keyword-only dataclass bound to the element ``<foo>``."""

    TAG: ClassVar[str]
    NSMAP: ClassVar[dict[str | None, str] | None]
    _PROPS: ClassVar[tuple[tuple[str, Prop], ...]]
    _CLAIMED: ClassVar[frozenset[str]]
    _HINTS: ClassVar[dict[str, Any] | None]

    def __init_subclass__(
        cls, *, tag: str, nsmap: dict[str | None, str] | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.TAG = tag
        cls.NSMAP = nsmap
        dataclass(frozen=True, kw_only=True)(cls)
        cls._PROPS = tuple(
            (f.name, f.metadata[PROP_KEY])
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]  # a dataclass since above
            if PROP_KEY in f.metadata
        )
        cls._CLAIMED = _claimed(cls._PROPS)
        cls._HINTS = None

    def __post_init__(self) -> None:
        for name, hint in type(self)._hints().items():
            _check_type(type(self), name, hint, getattr(self, name))
        self._validate()

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        # Resolved on first use: a model may name models defined further down its module.
        if cls._HINTS is None:
            hints = typing.get_type_hints(cls)
            cls._HINTS = {name: hints[name] for name, _ in cls._PROPS}
        return cls._HINTS

    def _validate(self) -> None:
        """Cross-field or format checks; subclasses override."""

    # -- writing -----------------------------------------------------------

    def to_element(self, tag: str | None = None) -> Any:
        el = etree.Element(tag or self.TAG, nsmap=self.NSMAP)
        for name, prop in self._PROPS:
            _write(el, prop, getattr(self, name))
        return el

    def to_xml(self) -> str:
        """Pretty, deterministic XML: attributes in declaration order."""
        text: str = etree.tostring(self.to_element(), pretty_print=True, encoding="unicode")
        return text

    # -- reading -----------------------------------------------------------

    @classmethod
    def from_element(cls, el: Any, tag: str | None = None) -> Self:
        expected = tag or cls.TAG
        if el.tag != expected:
            raise ValueError(f"expected <{expected}>, got <{el.tag}>")
        kwargs: dict[str, Any] = {}
        for name, prop in cls._PROPS:
            try:
                got = _read(el, prop, cls._CLAIMED)
            except ValueError as exc:
                raise ValueError(f"<{expected}> {prop.path or name}: {exc}") from None
            if got is not dataclasses.MISSING:
                kwargs[name] = got
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # dataclass from __init_subclass__
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in kwargs:
                where = f.metadata[PROP_KEY].path or f.name
                raise ValueError(f"<{expected}> lacks required {where}")
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(f"<{expected}>: {exc}") from None

    @classmethod
    def from_xml(cls, text: str) -> Self:
        return cls.from_element(parse_xml(text))


def parse_xml(text: str) -> Any:
    """The root element of `text`, as every model reads it."""
    # No entity expansion and no network: domain XML may come from a remote host.
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    try:
        return etree.fromstring(text.encode("utf-8"), parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None


# -- engine ------------------------------------------------------------------


def _claimed(props: tuple[tuple[str, Prop], ...]) -> frozenset[str]:
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


def _write(el: Any, prop: Prop, val: Any) -> None:
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


def _read(el: Any, prop: Prop, claimed: frozenset[str]) -> Any:
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


def _check_type(cls: type, name: str, hint: Any, val: Any) -> None:
    """Reject values a caller could not have meant, naming field and choices."""
    if _matches(hint, val):
        return
    choices = _literals(hint)
    if choices and not isinstance(val, tuple):
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{cls.__name__}.{name}: {val!r} is not one of {allowed}")
    raise TypeError(f"{cls.__name__}.{name}: {val!r} does not match {hint}")


def _matches(hint: Any, val: Any) -> bool:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return val is None
    if origin is Literal:
        return any(val == a and type(val) is type(a) for a in args)
    if origin in (Union, types.UnionType):
        return any(_matches(a, val) for a in args)
    if origin is tuple:
        return isinstance(val, tuple) and all(_matches(args[0], v) for v in val)
    if hint is int:
        return isinstance(val, int) and not isinstance(val, bool)
    if isinstance(hint, type):
        return isinstance(val, hint)
    return True


def _literals(hint: Any) -> list[Any]:
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    return [a for arg in typing.get_args(hint) for a in _literals(arg)]
