"""`kvmctl exporter FILE --listen HOST:PORT`: Prometheus metrics of a cockpit."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, SpecArg, app
from kvmctl.observe.exporter import export, parse_listen

DEFAULT_LISTEN = "127.0.0.1:9477"


@app.command()
def exporter(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    on_host: HostOpt = None,
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve /metrics on ([::1]:PORT for IPv6).")
    ] = DEFAULT_LISTEN,
) -> None:
    """Serve the set's metrics for Prometheus at http://HOST:PORT/metrics until SIGTERM or
    Ctrl-C: VM state, readiness, supervisor restarts, CPU time per vCPU, audit drift,
    hugepage backing, snapshots and snapshot/migration durations (docs/metrics.md)."""
    address = parse_listen(listen)  # before anything else: a bad flag starts nothing
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    export(file, connect, on_host, address, stop)
