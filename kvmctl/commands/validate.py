"""`kvmctl validate FILE`: check a cockpit spec without touching the host."""

from __future__ import annotations

import typer

from kvmctl.commands._app import JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json
from kvmctl.spec import load_spec, spec_hash


@app.command()
def validate(
    file: SpecArg,
    json_out: JsonOpt = False,
) -> None:
    """Validate a cockpit spec: every problem at once, with file:line and field path."""
    spec = load_spec(file)
    if json_out:
        print_json(
            {
                "ok": True,
                "name": spec.name,
                "spec_hash": spec_hash(spec),
                "vms": sorted(spec.vms),
                "networks": sorted(spec.networks),
            }
        )
        return
    typer.echo(
        f"{file}: ok — cockpit '{spec.name}', {len(spec.vms)} VM(s), "
        f"{len(spec.networks)} network(s)"
    )
