"""The Typer app. Each verb lives in its own module here and only formats output:
the logic is in the public API modules (spec, host, planner, apply, ...)."""

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
