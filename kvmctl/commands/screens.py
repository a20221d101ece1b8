"""`kvmctl screens FILE -o cockpit.png`: all displays in one picture."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from kvmctl import cockpit
from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json, print_table
from kvmctl.observe.displays import require_pillow, write_picture


@app.command()
def screens(
    file: SpecArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="PNG file to write.", show_default=False)
    ],
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    watch: Annotated[
        float | None,
        typer.Option("--watch", help="Rewrite the picture every N seconds until interrupted."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Grab every VM's display and compose one PNG laid out like the cockpit (HUD on top;
    cluster, IVI, passenger below), each tile labelled with name, state and uptime."""
    require_pillow()
    session = cockpit.open_session(file, connect, host=host)
    try:
        while True:
            shown = write_picture(session, output)
            if json_out:
                print_json(
                    {
                        "set": session.spec.name,
                        "file": str(output),
                        "tiles": [
                            {**b.as_dict(), "state": t.state, "uptime_s": t.uptime_s}
                            for b, t in shown
                        ],
                    }
                )
            else:
                print_table(
                    f"{output}: cockpit '{session.spec.name}'",
                    ["vm", "slot", "state", "picture"],
                    [
                        [
                            t.vm,
                            b.slot,
                            t.state,
                            b.source if not t.note else f"{b.source} ({t.note})",
                        ]
                        for b, t in shown
                    ],
                )
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return
