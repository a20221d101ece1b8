"""`kvmctl migrate [FILE] VM... --to URI`: live-migrate VMs of a cockpit.

Without FILE the VMs are looked up by VM or domain name on the source, and the
spec is the one their set was last applied from (kvmctl.cockpit.record).

Also `kvmctl migrate --all FILE --to URI` (the whole set) and
`kvmctl migrate --abort FILE VM` (cancel a running job from elsewhere).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from kvmctl import migration
from kvmctl.cockpit import record
from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, JsonOpt, app
from kvmctl.commands._output import console, print_json
from kvmctl.errors import UsageError
from kvmctl.planner.migration import Overrides
from kvmctl.spec.units import parse_duration, parse_rate

if TYPE_CHECKING:
    from kvmctl.adapters.migration import JobProgress

MiB = 1024 * 1024


def _overrides(
    max_downtime: str | None,
    bandwidth: str | None,
    auto_converge: bool | None,
    postcopy: bool | None,
    multifd: int | None,
    compression: str | None,
    timeout: str | None,
    on_timeout: str | None,
) -> Overrides:
    try:
        return Overrides(
            max_downtime_ms=None
            if max_downtime is None
            else max(1, round(parse_duration(max_downtime) * 1000)),
            bandwidth_mibps=None if bandwidth is None else max(1, parse_rate(bandwidth) // MiB),
            auto_converge=auto_converge,
            postcopy=postcopy,
            multifd=multifd,
            compression=compression,
            completion_timeout_s=None if timeout is None else parse_duration(timeout),
            on_timeout=on_timeout,
        )
    except ValueError as err:
        raise UsageError(f"bad migration option: {err}") from None


def _line(vm: str, p: JobProgress) -> None:
    total = max(p.data_total, 1)
    downtime = f", expected downtime {p.expected_downtime_ms} ms" if p.expected_downtime_ms else ""
    phase = " post-copy" if p.postcopy else ""
    print(
        f"[{p.elapsed_ms / 1000:6.1f}s] {vm}:{phase} pass {p.iteration}, "
        f"{p.data_processed / MiB:.1f}/{total / MiB:.1f} MiB sent, "
        f"{p.data_remaining / MiB:.1f} MiB left, dirty {p.dirty_rate} pages/s{downtime}",
        file=sys.stderr,
        flush=True,
    )


class _Throttle:
    """One progress line a second per VM, whatever the poll rate."""

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def __call__(self, vm: str, p: JobProgress) -> None:
        if p.elapsed_ms - self.last.get(vm, -1000) >= 1000:
            self.last[vm] = p.elapsed_ms
            _line(vm, p)


@app.command()
def migrate(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="[SPEC] VM...: the cockpit spec, then VMs to move; or only VMs (VM or domain "
            "names) of a set applied here, whose spec kvmctl apply recorded. --all SPEC moves all.",
            metavar="[SPEC] VM...",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option("--to", help="Destination libvirt URI (qemu+ssh:// or qemu+tls://)."),
    ] = None,
    all_vms: Annotated[bool, typer.Option("--all", help="Move the whole set.")] = False,
    abort: Annotated[
        bool, typer.Option("--abort", help="Cancel the running migration of VM.")
    ] = False,
    copy_storage: Annotated[
        bool, typer.Option("--copy-storage", help="Copy the VMs' disks (no shared storage).")
    ] = False,
    keep_source: Annotated[
        bool, typer.Option("--keep-source", help="Keep the domain defined on the source.")
    ] = False,
    tls: Annotated[bool, typer.Option("--tls", help="Encrypt the migration stream.")] = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Allow a plain qemu+tcp:// destination.")
    ] = False,
    migrate_uri: Annotated[
        str | None,
        typer.Option(
            "--migrate-uri",
            help="Where the destination QEMU listens (tcp://ADDR); default: the --to URI's "
            "host, as reached from here.",
        ),
    ] = None,
    max_downtime: Annotated[
        str | None, typer.Option("--max-downtime", help="e.g. 50ms (default by criticality).")
    ] = None,
    bandwidth: Annotated[str | None, typer.Option("--bandwidth", help="e.g. 100MB/s.")] = None,
    auto_converge: Annotated[
        bool | None, typer.Option("--auto-converge/--no-auto-converge", show_default=False)
    ] = None,
    postcopy: Annotated[
        bool | None, typer.Option("--postcopy/--no-postcopy", show_default=False)
    ] = None,
    multifd: Annotated[
        int | None, typer.Option("--multifd", min=1, max=64, help="Parallel connections.")
    ] = None,
    compression: Annotated[
        str | None, typer.Option("--compression", help="zlib, zstd or xbzrle.")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="Completion timeout, e.g. 60s.")
    ] = None,
    on_timeout: Annotated[
        str | None, typer.Option("--on-timeout", help="abort or postcopy.")
    ] = None,
    connect: ConnectOpt = DEFAULT_URI,
    as_json: JsonOpt = False,
) -> None:
    """Live-migrate VMs to another host: destination checked first, pins re-planned there."""
    file, vms = record.spec_and_vms(targets or [], connect)
    if file is None:
        raise UsageError("name the VMs to move (or the spec and --all)")
    if abort:
        if not vms or len(vms) != 1:
            raise UsageError("--abort takes the spec and exactly one VM")
        domain = migration.abort(file, vms[0], connect)
        console().print(f"abort requested for {domain}")
        return
    if to is None:
        raise UsageError("--to URI is required (the destination libvirt host)")
    if all_vms == bool(vms):
        raise UsageError("name the VMs to move, or pass --all (not both)")
    if compression not in (None, "zlib", "zstd", "xbzrle"):
        raise UsageError(f"--compression {compression!r}: use zlib, zstd or xbzrle")
    if on_timeout not in (None, "abort", "postcopy"):
        raise UsageError(f"--on-timeout {on_timeout!r}: use abort or postcopy")
    request = migration.Request(
        dest_uri=to,
        migrate_uri=migrate_uri,
        copy_storage=copy_storage,
        keep_source=keep_source,
        tls=tls,
        overrides=_overrides(
            max_downtime,
            bandwidth,
            auto_converge,
            postcopy,
            multifd,
            compression,
            timeout,
            on_timeout,
        ),
    )
    if insecure and not as_json:
        console().print(f"[yellow]warning:[/] {to} is plain TCP, unauthenticated and unencrypted")
    try:
        report = migration.migrate(
            file,
            None if all_vms else vms,
            connect,
            request,
            insecure=insecure,
            progress=_Throttle(),
        )
    except migration.MigrationFailed as err:
        if as_json:
            print_json(err.report.to_json())
        raise
    if as_json:
        print_json(report.to_json())
        return
    for r in report.results:
        pins = ", ".join(f"{k} on {v}" for k, v in r.pins.items())
        console().print(
            f"{r.vm}: moved in {r.seconds:.2f} s, downtime {r.downtime_ms} ms, "
            f"{(r.bytes_moved or 0) / MiB:.1f} MiB in {r.iterations} passes"
            + (" (post-copy)" if r.postcopy else "")
            + f"; {pins}"
        )
    for note in report.notes:
        console().print(f"note: {note}")
