"""The shared Typer app and the arguments and options the verbs share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmctl import __version__

app = typer.Typer(
    name="kvmctl",
    help="Partitioned, mixed-criticality VM sets (the cockpit) on Linux/KVM via libvirt.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_URI = "qemu:///system"

ConnectOpt = Annotated[
    str,
    typer.Option(
        "--connect",
        "-c",
        envvar="LIBVIRT_DEFAULT_URI",
        help="libvirt URI (default qemu:///system; LIBVIRT_DEFAULT_URI honoured).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SpecArg = Annotated[Path, typer.Argument(help="Cockpit spec (YAML).", show_default=False)]
HostOpt = Annotated[
    str | None,
    typer.Option(
        "--host",
        help="Only the VMs the spec places on this host (hosts:), through -c: kvmctl "
        "running on that host. Without it plan/apply/status/destroy go to every host's URI; "
        "other verbs take the VMs without host:.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kvmctl {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """kvmctl: one YAML cockpit spec -> pinned, reserved, supervised libvirt domains."""
