"""Live migration of one VM or a whole cockpit to another libvirt host: the
public API behind `kvmctl migrate`.

Inside: `api` (migrate, abort: destination checked for every VM first, then
one at a time), `preflight` (what the destination offers, storage, the XML
sent), `run` (one migration job with its progress and policy steps),
`transport` (URIs). The pure part (the destination's pins, policy, order) is
kvmctl.planner.migration; the libvirt calls are kvmctl.adapters.migration.
"""

from __future__ import annotations

from kvmctl.migration.api import MigrationFailed, MigrationReport, Request, abort, migrate

__all__ = ["MigrationFailed", "MigrationReport", "Request", "abort", "migrate"]
