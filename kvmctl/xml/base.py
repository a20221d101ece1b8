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
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, dataclass_transform

from lxml import etree

from kvmctl.xml.convert import STR, Converter
from kvmctl.xml.engine import claimed_tags, read, write
from kvmctl.xml.typecheck import check_type

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
        cls._CLAIMED = claimed_tags(cls._PROPS)
        cls._HINTS = None

    def __post_init__(self) -> None:
        for name, hint in type(self)._hints().items():
            check_type(type(self), name, hint, getattr(self, name))
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
            write(el, prop, getattr(self, name))
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
                got = read(el, prop, cls._CLAIMED)
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
