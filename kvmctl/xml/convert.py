"""Text <-> value converters and libvirt size units.

libvirt writes every scalar as text; a converter names both directions once so
each declared property stays a one-liner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Converter(Generic[T]):
    """A pair of functions between an XML string and a Python value."""

    name: str
    parse: Callable[[str], T]
    format: Callable[[T], str]


def _parse_int(text: str) -> int:
    # libvirt accepts hex in a few places (iobase) but every property modelled
    # here is decimal; base 10 keeps "010" from turning into 8.
    return int(text.strip(), 10)


def _parse_bool(true: str, false: str) -> Callable[[str], bool]:
    def parse(text: str) -> bool:
        if text == true:
            return True
        if text == false:
            return False
        raise ValueError(f"expected {true!r} or {false!r}, got {text!r}")

    return parse


STR: Converter[str] = Converter("str", str, str)
INT: Converter[int] = Converter("int", _parse_int, str)
YESNO: Converter[bool] = Converter(
    "yes/no", _parse_bool("yes", "no"), lambda v: "yes" if v else "no"
)
ONOFF: Converter[bool] = Converter(
    "on/off", _parse_bool("on", "off"), lambda v: "on" if v else "off"
)

# Binary and decimal multipliers as libvirt's virScaleInteger understands them.
_UNIT_FACTORS: dict[str, int] = {"b": 1, "bytes": 1}
for _power, _letter in enumerate("kmgtpe", start=1):
    _UNIT_FACTORS[_letter] = 1024**_power
    _UNIT_FACTORS[f"{_letter}ib"] = 1024**_power
    _UNIT_FACTORS[f"{_letter}b"] = 1000**_power


def unit_factor(unit: str) -> int:
    """Bytes in one `unit` (case-insensitive, as libvirt reads it)."""
    try:
        return _UNIT_FACTORS[unit.lower()]
    except KeyError:
        raise ValueError(f"unknown size unit {unit!r}") from None


def rescale(amount: int, from_unit: str, to_unit: str) -> int:
    """Express `amount` `from_unit` in `to_unit`, refusing to lose precision."""
    total = amount * unit_factor(from_unit)
    target = unit_factor(to_unit)
    if total % target:
        raise ValueError(f"{amount} {from_unit} is not a whole number of {to_unit}")
    return total // target
