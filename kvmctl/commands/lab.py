"""`kvmctl lab up|down|list`: a disposable second libvirt host, for trying migration."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmctl.commands._app import JsonOpt, app
from kvmctl.commands._output import console, print_json, print_table
from kvmctl.errors import UsageError
from kvmctl.testing import lab as labs

lab_app = typer.Typer(help="A disposable second libvirt host on this machine (test only).")
app.add_typer(lab_app, name="lab")

NameArg = Annotated[str, typer.Argument(help="Lab name (letters and digits, max 9).")]


def _check(name: str) -> str:
    if not (name.isalnum() and name.isascii() and 0 < len(name) <= 9):
        raise UsageError(f"lab name {name!r}: use 1-9 letters or digits")
    return name


@lab_app.command("up")
def up(
    name: NameArg = "lab",
    shared_storage: Annotated[
        bool,
        typer.Option(
            "--shared-storage",
            help="Let the lab see this host's volume directory (as NFS would): VMs move "
            "without --copy-storage.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a libvirtd in its own network and mount namespaces, reachable over a veth."""
    state = labs.LabHost(_check(name), shared_storage=shared_storage).up()
    if as_json:
        print_json(
            {
                "name": state.name,
                "uri": state.uri,
                "migrate_uri": state.migrate_uri,
                "shared_storage": state.shared_storage,
            }
        )
        return
    copy = "" if state.shared_storage else " --copy-storage"
    console().print(
        f"lab '{state.name}' is up: {state.uri} (plain TCP on a private veth, no "
        f"authentication: test only). Try: kvmctl migrate VM --to {state.uri} "
        f"--insecure{copy}; remove it with: kvmctl lab down {state.name}"
    )


@lab_app.command("down")
def down(name: NameArg = "lab") -> None:
    """Remove a lab: its guests, daemons, namespace, veth and files."""
    state = labs.load_state(_check(name))
    if state is None:
        raise UsageError(f"there is no lab '{name}' (see `kvmctl lab list`)")
    labs.teardown(state)
    console().print(f"lab '{name}' removed")


@lab_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """The labs on this machine."""
    found = labs.list_labs()
    if as_json:
        print_json([{"name": s.name, "uri": s.uri, "pids": s.pids} for s in found])
        return
    print_table("labs", ["name", "uri", "pids"], [[s.name, s.uri, s.pids] for s in found])
