"""`kvmctl net status [FILE]`: kvmctl's bridges, their ports, isolation, counters, limits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmctl.commands._app import JsonOpt, app
from kvmctl.commands._output import print_json, print_table
from kvmctl.observe.net import BridgeStatus, net_status
from kvmctl.spec import load_spec

net_app = typer.Typer(
    help="Bridges, ports and bandwidth limits of kvmctl networks.", no_args_is_help=True
)
app.add_typer(net_app, name="net")

NetnsOpt = Annotated[
    str | None,
    typer.Option("--netns", help="Look inside this network namespace (e.g. a test lab host)."),
]

COLUMNS = (
    "bridge",
    "network",
    "state",
    "port",
    "vm",
    "isolated",
    "rx bytes",
    "tx bytes",
    "limit in",
    "limit out",
)


@net_app.command("status")
def status(
    file: Annotated[
        Path | None,
        typer.Argument(help="Cockpit spec: show its bridges and name the VM behind each port."),
    ] = None,
    netns: NetnsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Bridges (all kvmctl ones, or the spec's), their ports, isolation and traffic counters.

    Counters are the host's view of a port: rx is what the guest sent, tx what it received.
    """
    spec = load_spec(file) if file is not None else None
    bridges = net_status(spec, netns)
    if json_out:
        print_json({"netns": netns, "bridges": [b.to_dict() for b in bridges]})
        return
    title = "kvmctl networks" + (f" of '{spec.name}'" if spec else "")
    title += f" in network namespace '{netns}'" if netns else ""
    print_table(title, COLUMNS, rows(bridges))


def _state(b: BridgeStatus) -> str:
    if not b.present:
        return "missing"
    state = "up" if b.up else "down"
    return state if b.owned else f"{state}, not kvmctl's"


def _rate(value: int | None) -> str:
    return "" if value is None else f"{value / 1_000_000:g} MB/s"


def _isolated(isolated: bool, wanted: bool | None) -> str:
    text = "yes" if isolated else "no"
    if wanted is not None and wanted != isolated:
        text += f" (spec: {'yes' if wanted else 'no'})"
    return text


def rows(bridges: list[BridgeStatus]) -> list[list[object]]:
    out: list[list[object]] = []
    for b in bridges:
        network = f"{b.set_name}:{b.network}" if b.set_name else ""
        head: list[object] = [b.bridge, network, _state(b)]
        if not b.ports:
            out.append(head + ["", "", "", "", "", "", ""])
        for p in b.ports:
            vm = f"{p.vm} ({p.network})" if p.vm else ""
            out.append(
                head
                + [
                    p.ifname,
                    vm,
                    _isolated(p.isolated, p.isolated_wanted),
                    p.rx_bytes,
                    p.tx_bytes,
                    _rate(p.limit_in),
                    _rate(p.limit_out),
                ]
            )
    return out
