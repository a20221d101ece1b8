"""Tables on a terminal, plain lines otherwise, JSON on request."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A Rich table on a TTY; tab-separated lines with a header when piped."""
    if sys.stdout.isatty():
        # Cells are data, never markup: "[0-1]" must print as written.
        table = Table(title=escape(title))
        for col in columns:
            table.add_column(escape(col))
        for row in rows:
            table.add_row(*("" if v is None else escape(str(v)) for v in row))
        console().print(table)
        return
    sys.stdout.write(f"# {title}\n")
    sys.stdout.write("\t".join(columns) + "\n")
    for row in rows:
        sys.stdout.write("\t".join("" if v is None else str(v) for v in row) + "\n")


def progress_lines() -> Callable[[str, str], None]:
    """A progress callback (vm, what) printing timed lines on stderr."""
    t0 = time.monotonic()

    def say(vm: str, what: str) -> None:
        sys.stderr.write(f"[{time.monotonic() - t0:6.1f}s] {vm}: {what}\n")
        sys.stderr.flush()

    return say
