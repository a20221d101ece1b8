"""Start order from the depends_on graph: levels that may start in parallel."""

from __future__ import annotations

from kvmctl.spec.models import VM


def start_levels(vms: dict[str, VM]) -> list[list[str]]:
    """[[no deps], [deps only in level 0], ...]; each level sorted by name.

    Dependencies outside `vms` (e.g. on another host, or already running and
    unchanged) are taken as satisfied. The spec layer has rejected cycles.
    """
    remaining = {n: {d for d in vm.depends_on if d in vms} for n, vm in vms.items()}
    levels: list[list[str]] = []
    done: set[str] = set()
    while remaining:
        ready = sorted(n for n, deps in remaining.items() if deps <= done)
        if not ready:
            raise ValueError("dependency cycle among: " + ", ".join(sorted(remaining)))
        levels.append(ready)
        done.update(ready)
        for n in ready:
            del remaining[n]
    return levels


def level_of(levels: list[list[str]]) -> dict[str, int]:
    return {name: i for i, level in enumerate(levels) for name in level}
