"""CPU sets as libvirt and the kernel write them: "0-3,^2", "1,4-5"."""

from __future__ import annotations

from collections.abc import Iterable


def parse_cpuset(text: str) -> frozenset[int]:
    """Parse "0-3,^2" into {0, 1, 3}. Exclusions apply after all inclusions."""
    include: set[int] = set()
    exclude: set[int] = set()
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        target = include
        if part.startswith("^"):
            target, part = exclude, part[1:]
        if "-" in part:
            lo_text, hi_text = part.split("-", 1)
            lo, hi = _cpu(lo_text, text), _cpu(hi_text, text)
            if lo > hi:
                raise ValueError(f"'{text}' has a backwards range {lo}-{hi}")
            target.update(range(lo, hi + 1))
        else:
            target.add(_cpu(part, text))
    return frozenset(include - exclude)


def _cpu(part: str, whole: str) -> int:
    part = part.strip()
    if not part.isdigit():
        raise ValueError(f"'{whole}' is not a CPU set (like '0-3,^2')")
    return int(part)


def format_cpuset(cpus: Iterable[int]) -> str:
    """{0, 1, 2, 5} -> "0-2,5": the shortest range form, stable for diffs."""
    ordered = sorted(set(cpus))
    if not ordered:
        return ""
    runs: list[list[int]] = []
    for cpu in ordered:
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)
