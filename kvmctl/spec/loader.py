"""Load a cockpit spec from YAML: every problem at once, each as `file:line path: message`.

YAML is composed into a node tree first so that each field path can be
traced back to the line it came from, and duplicate keys (which PyYAML would
silently collapse, e.g. two VMs of one name) are caught.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kvmctl.errors import SpecError, UsageError
from kvmctl.spec import semantics
from kvmctl.spec.models import Cockpit

FieldPath = tuple[str | int, ...]


def load_spec(path: str | Path) -> Cockpit:
    """Read, parse and validate a spec file. Raises SpecError with every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"spec file '{path}' does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read spec file '{path}': {err}") from None
    return parse_spec(text, str(path))


def parse_spec(text: str, filename: str = "<spec>") -> Cockpit:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError([f"{filename}:{line}: YAML syntax error: {problem}"]) from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise SpecError([f"{filename}:1: the spec must be a mapping with name: and vms:"])

    lines = _LineMap(node)
    problems = [f"{filename}:{line} {p}: duplicate key" for p, line in lines.duplicates]
    data = yaml.safe_load(text)
    problems += [_format(filename, lines, loc, msg) for loc, msg in semantics.check_names(data)]
    try:
        spec = Cockpit.model_validate(data)
    except ValidationError as err:
        for e in err.errors():
            loc = _clean_loc(e["loc"])
            problems.append(_format(filename, lines, loc, _message(e, loc)))
        raise SpecError(problems) from None
    for loc, message in semantics.check(spec):
        problems.append(_format(filename, lines, loc, message))
    if problems:
        raise SpecError(problems)
    return spec


def spec_hash(spec: BaseModel) -> str:
    """Stable hash of a spec (or one VM of it): same content, same hash."""
    canonical = json.dumps(spec.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def dotted(loc: FieldPath) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top)"


def _format(filename: str, lines: _LineMap, loc: FieldPath, message: str) -> str:
    return f"{filename}:{lines.line(loc)} {dotted(loc)}: {message}"


class _LineMap:
    """Field path -> 1-based line, from a composed YAML node tree."""

    def __init__(self, root: yaml.Node):
        self._lines: dict[FieldPath, int] = {(): root.start_mark.line + 1}
        self.duplicates: list[tuple[str, int]] = []
        self._walk(root, ())

    def _walk(self, node: yaml.Node, path: FieldPath) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = str(key_node.value)
                child = path + (key,)
                if key in seen:
                    self.duplicates.append((dotted(child), key_node.start_mark.line + 1))
                seen.add(key)
                self._lines[child] = key_node.start_mark.line + 1
                self._walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._lines[path + (i,)] = item.start_mark.line + 1
                self._walk(item, path + (i,))

    def line(self, loc: FieldPath) -> int:
        # A missing field has no line of its own: point at its closest parent.
        for end in range(len(loc), -1, -1):
            if loc[:end] in self._lines:
                return self._lines[loc[:end]]
        return 1


def _clean_loc(loc: tuple[Any, ...]) -> FieldPath:
    """Drop pydantic's validator tags (e.g. 'function-after[...]', union member names)."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in ("str", "int", "float")):
            continue
        out.append("in" if part == "in_" else part)
    return tuple(out)


def _message(error: Any, loc: FieldPath) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        field = str(loc[-1]) if loc else "?"
        known = _known_fields(loc[:-1])
        hint = difflib.get_close_matches(field, known, n=1)
        suffix = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(known)})"
        return f"unknown field '{field}'{suffix}"
    if kind == "missing":
        return "is required"
    if kind == "literal_error":
        return f"must be {ctx.get('expected', '')} (got {error.get('input')!r})"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be a whole number (got {error.get('input')!r})"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false (got {error.get('input')!r})"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        msg = str(error["msg"]).replace("Input should be", "must be")
        return f"{msg} (got {error.get('input')!r})"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be a mapping (got {type(error.get('input')).__name__})"
    if kind == "list_type":
        return f"must be a list (got {type(error.get('input')).__name__})"
    if kind in ("too_short", "too_long"):
        return str(error["msg"]).replace("List should", "must").replace("Dictionary should", "must")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"]).replace("Input should be", "must be")


def _known_fields(loc: FieldPath) -> list[str]:
    """Field names allowed at a location, found by walking the model annotations."""
    current: Any = Cockpit
    for part in loc:
        current = _step(current, part)
        if current is None:
            return []
    model = _as_model(current)
    if model is None:
        return []
    return sorted((f.alias or name) for name, f in model.model_fields.items())


def _step(tp: Any, part: str | int) -> Any:
    model = _as_model(tp)
    if model is not None:
        name = "in_" if part == "in" else part
        field = model.model_fields.get(str(name))
        return field.annotation if field else None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def _as_model(tp: Any) -> type[BaseModel] | None:
    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _as_model(arg)
            if found is not None:
                return found
    return None
