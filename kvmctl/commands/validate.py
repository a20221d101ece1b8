"""`kvmctl validate FILE`: check a cockpit spec without touching the host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmctl.commands._app import app


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="Cockpit spec (YAML).")]) -> None:
    """Validate a cockpit spec: every problem at once, with file:line and field path."""
    raise NotImplementedError
