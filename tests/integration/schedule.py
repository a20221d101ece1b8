"""The order in which the parallel part hands modules to its workers.

`scripts/integration.sh` runs that part with `--dist loadfile
--no-loadscope-reorder`: a worker takes the next module in collection order
when its current one is nearly done. The modules that take longest (a Debian
boot or several, many migrations, many group snapshots) come first, so the
part ends on short modules spread over every worker rather than on one worker
still in a long one while the others wait. A module not listed keeps its file
order after these; a stale list costs time, never a result.
"""

from __future__ import annotations

import pytest

LONGEST_FIRST = (
    "test_debian_guest.py",
    "test_migration.py",
    "test_snapshots.py",
    "test_supervise.py",
    "test_apply_failures.py",
    "test_multihost.py",
    "test_cockpit_networks.py",
    "test_channels.py",
    "test_deadlines.py",
)


def _rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_rank)  # stable: tests keep their file order within a module
