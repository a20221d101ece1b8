"""A rollback journal: every change apply makes is recorded with its undo.

On failure the undos run newest first, each on its own: one that fails is
reported and the rest still run, so a half-done apply leaves as little
behind as possible.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Journal:
    entries: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, what: str, undo: Callable[[], object]) -> None:
        with self._lock:
            self.entries.append((what, undo))

    def rollback(self) -> list[str]:
        """Undo everything recorded; return the undos that failed, in words."""
        failures: list[str] = []
        with self._lock:
            entries, self.entries = self.entries, []
        for what, undo in reversed(entries):
            try:
                undo()
            except Exception as err:  # noqa: BLE001 - keep undoing the rest
                failures.append(f"could not undo '{what}': {err}")
        return failures

    def forget(self) -> None:
        with self._lock:
            self.entries.clear()
