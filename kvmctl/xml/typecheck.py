"""A model's field values against its type hints, checked at construction:
a value a caller could not have meant fails there, naming the field (and the
choices of a Literal), not later as wrong XML.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union


def check_type(cls: type, name: str, hint: Any, val: Any) -> None:
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
