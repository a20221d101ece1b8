"""`kvmctl supervise FILE`: keep the cockpit's VMs running, in the foreground."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer

from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, SpecArg, app
from kvmctl.errors import UsageError
from kvmctl.spec.units import parse_duration
from kvmctl.supervise import Supervisor


def _duration(text: str, option: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise UsageError(f"{option} {text!r}: {err}") from None


@app.command()
def supervise(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Where to keep <set>.json (default /run/kvmctl/supervise; "
            "KVMCTL_SUPERVISE_DIR honoured).",
            show_default=False,
        ),
    ] = None,
    backoff: Annotated[
        str, typer.Option("--backoff", help="Delay before the 2nd restart in a window; doubles.")
    ] = "1s",
    backoff_max: Annotated[
        str, typer.Option("--backoff-max", help="Longest delay between restarts.")
    ] = "30s",
) -> None:
    """Restart crashed or killed VMs per their restart policy; one JSON line per decision.

    Runs in the foreground until SIGTERM or SIGINT. Lifecycle, watchdog and
    reboot events come from one libvirt connection (keepalive, reconnects when
    libvirtd restarts).
    """
    sup = Supervisor(
        file,
        connect,
        host=host,
        directory=state_dir,
        backoff=_duration(backoff, "--backoff"),
        backoff_max=_duration(backoff_max, "--backoff-max"),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: sup.stop())
    raise typer.Exit(sup.run())
