"""Live migration of one VM or a whole cockpit to another libvirt host.

`migrate()` checks the destination for every VM first (nothing moves unless
all can), then moves them one at a time in `migration_order` and stops at the
first failure, which leaves every guest running somewhere: the moved ones on
the destination, the rest (the failed one included) on the source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from kvmctl.adapters import migration as job_api
from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.virt import Virt
from kvmctl.errors import ApplyError, UsageError
from kvmctl.migration.preflight import Prepared, Request, prepare
from kvmctl.migration.run import MigrationResult, ProgressFn, run_one
from kvmctl.migration.transport import check_destination, default_migrate_uri
from kvmctl.planner.migration import migration_order
from kvmctl.planner.plan import domain_name
from kvmctl.session import plan_options
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state import history
from kvmctl.state.setlock import set_lock

__all__ = ["MigrationFailed", "MigrationReport", "Request", "abort", "migrate"]


@dataclass
class MigrationReport:
    dest_uri: str
    results: list[MigrationResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "destination": self.dest_uri,
            "vms": [r.to_json() for r in self.results],
            "notes": self.notes,
        }


class MigrationFailed(ApplyError):
    """A job failed or was aborted; the guest is back on the source."""

    def __init__(self, message: str, report: MigrationReport):
        super().__init__(message)
        self.report = report


def migrate(
    spec: Cockpit | str | Path,
    vms: list[str] | None,
    source_uri: str,
    request: Request,
    *,
    insecure: bool = False,
    progress: ProgressFn | None = None,
) -> MigrationReport:
    """Move `vms` (None: the whole set) of `spec` from `source_uri` to
    `request.dest_uri`."""
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    check_destination(request.dest_uri, source_uri, insecure)
    names = list(spec.vms) if vms is None else vms
    unknown = sorted(set(names) - set(spec.vms))
    if unknown or not names:
        raise UsageError(
            f"cockpit '{spec.name}' has no VM "
            f"{', '.join(repr(n) for n in unknown) or '(none given)'} "
            f"(it has {', '.join(sorted(spec.vms))})"
        )
    if request.migrate_uri is None:
        # The stream goes to the address the destination libvirtd answers on
        # (for a lab host: its veth address), not to whatever its hostname
        # resolves to.
        request = replace(request, migrate_uri=default_migrate_uri(request.dest_uri))
    with set_lock(spec.name):
        source = Virt(open_connection(source_uri))
        dest = Virt(open_connection(request.dest_uri))
        order = migration_order(spec, names)
        prepared, notes = prepare(spec, order, source, dest, request, plan_options(spec))
        report = MigrationReport(request.dest_uri, notes=notes + _host_side_notes(prepared))
        _ensure_pools(
            source,
            dest,
            {c.pool for p in prepared.values() for c in p.copies}
            | {pool for p in prepared.values() for pool in p.shared_pools},
        )
        for name in order:
            result = run_one(prepared[name], source, dest, progress)
            report.results.append(result)
            if result.status == "completed":
                history.record(
                    spec.name, "migration", {name: result.seconds}, name=request.dest_uri
                )
            if result.status != "completed":
                moved = [r.vm for r in report.results if r.status == "completed"]
                raise MigrationFailed(
                    f"migrating VM '{name}' {result.status}: {result.error}; it is "
                    f"{result.source_state}"
                    + (f" (already moved: {', '.join(moved)})" if moved else "")
                    + (
                        f"; not moved: {', '.join(order[len(report.results) :])}"
                        if len(report.results) < len(order)
                        else ""
                    ),
                    report,
                )
        return report


def _ensure_pools(source: Virt, dest: Virt, pools: set[str]) -> None:
    """Disks copied over NBD land in a volume libvirt creates in the pool of the
    same name on the destination, and a disk on shared storage is found there
    through that pool: define it there as it is here."""
    for pool in sorted(pools):
        xml = source.pool_xml(pool)
        if xml is not None:
            dest.ensure_pool(xml, pool)


def _host_side_notes(prepared: dict[str, Prepared]) -> list[str]:
    """What libvirt does not carry: kvmctl sets these on the host itself."""
    notes = []
    for name, p in prepared.items():
        if p.plan.realtime is not None:
            notes.append(
                f"VM '{name}': its vCPUs run SCHED_OTHER on the destination until `kvmctl apply` "
                "runs there (real-time policy and RT budgets are set by kvmctl on the host)"
            )
        if any(nic.bandwidth for nic in p.plan.nics):
            notes.append(
                f"VM '{name}': NIC shaping is set by kvmctl on the host; run `kvmctl apply` on "
                "the destination to shape it there"
            )
    return notes


def abort(spec: Cockpit | str | Path, vm: str, source_uri: str) -> str:
    """Cancel the migration job of `vm` running from `source_uri`."""
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    if vm not in spec.vms:
        raise UsageError(f"cockpit '{spec.name}' has no VM '{vm}'")
    domain = domain_name(spec.name, vm)
    source = Virt(open_connection(source_uri))
    if job_api.state(source, domain) is None:
        raise UsageError(f"VM '{vm}' (domain {domain}) is not on {source_uri}")
    if not job_api.abort_job(source, domain):
        raise UsageError(f"VM '{vm}' has no migration running")
    return domain
