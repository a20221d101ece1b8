"""The Typer app. Each verb lives in its own module here and only parses its
arguments, calls the operation packages (cockpit, snapshot, migration,
supervise, observe, host, state) and formats what they return."""

from __future__ import annotations

from kvmctl.commands import (  # noqa: F401  (register verbs)
    audit,
    cockpit,
    doctor,
    exporter,
    lab,
    migrate,
    net,
    screens,
    snapshot,
    supervise,
    top,
    validate,
)
from kvmctl.commands._app import app

__all__ = ["app"]
