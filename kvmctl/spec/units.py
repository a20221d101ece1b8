"""Parsers for the human units a cockpit spec uses: sizes, durations, percentages, rates.

Each returns a plain number in one base unit (bytes, seconds, percent, bytes/s)
and raises ValueError with a sentence a spec author can act on.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
# Rates: bytes per second, or bits per second when the unit says "bit".
_RATE_UNITS = {
    "b/s": 1,
    "kb/s": 1000,
    "mb/s": 1000**2,
    "gb/s": 1000**3,
    "kib/s": 1024,
    "mib/s": 1024**2,
    "gib/s": 1024**3,
    "bit/s": 1 / 8,
    "kbit/s": 1000 / 8,
    "mbit/s": 1000**2 / 8,
    "gbit/s": 1000**3 / 8,
}
_NUMBER_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z/%]*)\s*$")


def _split(text: str, what: str, example: str) -> tuple[float, str]:
    match = _NUMBER_UNIT.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a {what} (write it like '{example}')")
    return float(match.group(1)), match.group(2).lower()


def parse_size(value: object) -> int:
    """'256MiB' -> bytes. Plain integers are bytes. IEC (KiB) and SI (KB) units."""
    if isinstance(value, bool):
        raise ValueError("must be a size like '256MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size like '256MiB'")
    number, unit = _split(value, "size", "256MiB")
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit in '{value}' (use B, KiB, MiB, GiB, TiB)")
    size = number * _SIZE_UNITS[unit]
    if size != int(size):
        raise ValueError(f"'{value}' is not a whole number of bytes")
    return int(size)


def parse_duration(value: object) -> float:
    """'10s', '300ms', '2m' -> seconds. Plain numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like '10s' or '300ms'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("must be a duration like '10s' or '300ms'")
    number, unit = _split(value, "duration", "10s")
    if unit not in _DURATION_UNITS:
        raise ValueError(f"unknown duration unit in '{value}' (use ms, s, m, h)")
    return number * _DURATION_UNITS[unit]


def parse_percent(value: object) -> float:
    """'80%' -> 80.0. A bare number is taken as percent too."""
    if isinstance(value, bool):
        raise ValueError("must be a percentage like '80%'")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("must be a percentage like '80%'")
    number, unit = _split(value, "percentage", "80%")
    if unit not in ("%", ""):
        raise ValueError(f"'{value}' is not a percentage (write it like '80%')")
    return number


def parse_rate(value: object) -> int:
    """'1MB/s', '8Mbit/s' -> bytes per second (rounded down). Plain integers are bytes/s."""
    if isinstance(value, bool):
        raise ValueError("must be a rate like '1MB/s' or '8Mbit/s'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a rate like '1MB/s' or '8Mbit/s'")
    number, unit = _split(value, "rate", "1MB/s")
    if unit not in _RATE_UNITS:
        raise ValueError(
            f"unknown rate unit in '{value}' (use B/s, KB/s, MB/s, KiB/s, Mbit/s, ...)"
        )
    return int(number * _RATE_UNITS[unit])


def format_size(size: int) -> str:
    """Bytes -> the largest exact IEC unit, e.g. 268435456 -> '256MiB'."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"
