"""The Typer app. Each verb lives in its own module here and only formats output:
the logic is in the public API modules (spec, host, planner, apply, ...)."""

from __future__ import annotations

from kvmctl.commands import audit, cockpit, doctor, net, snapshot, supervise, validate  # noqa: F401  (register verbs)
from kvmctl.commands._app import app

__all__ = ["app"]
