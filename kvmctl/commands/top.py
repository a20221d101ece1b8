"""`kvmctl top [FILE]`: per VM and per vCPU CPU %, pCPU, memory, restarts."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, JsonOpt, app
from kvmctl.commands._output import console, print_table
from kvmctl.observe.top import Sampler, TopRow

COLUMNS = [
    "vm",
    "vcpu",
    "cpu %",
    "wait %",
    "pcpu",
    "affinity",
    "memory MiB",
    "rss MiB",
    "hugepages MiB",
    "restarts",
    "state",
]


def _cells(rs: list[TopRow]) -> list[list[object]]:
    def num(v: float | int | None) -> str:
        return "" if v is None else str(v)

    out: list[list[object]] = []
    for r in rs:
        name = f"{r.set_name}/{r.vm}" if r.set_name and r.vm else r.domain
        out.append(
            [
                name,
                len(r.vcpus) or "",
                num(r.cpu_pct),
                "",
                "",
                "",
                num(r.memory_mib),
                num(r.rss_mib),
                num(r.hugepages_mib),
                num(r.restarts),
                r.state,
            ]
        )
        for v in r.vcpus:
            out.append(
                [
                    "",
                    f"vcpu{v.index}",
                    num(v.cpu_pct),
                    num(v.wait_pct),
                    num(v.pcpu),
                    v.affinity,
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    return out


def _table(title: str, rs: list[TopRow]) -> Table:
    table = Table(title=escape(title))
    for col in COLUMNS:
        table.add_column(escape(col), justify="left" if col in ("vm", "vcpu", "state") else "right")
    for row in _cells(rs):
        table.add_row(*(escape(str(c)) for c in row))
    return table


@app.command()
def top(
    file: Annotated[
        Path | None,
        typer.Argument(help="Cockpit spec: only its VMs (default: every kvmctl VM here)."),
    ] = None,
    connect: ConnectOpt = DEFAULT_URI,
    once: Annotated[bool, typer.Option("--once", help="One measurement, then exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", "-n", help="Seconds between refreshes.", min=0.2)
    ] = 2.0,
    json_out: JsonOpt = False,
) -> None:
    """CPU % and current pCPU of every VM and vCPU, vCPU wait for a pCPU, memory, hugepages
    and restarts (from `kvmctl supervise`). 100 % is one host CPU."""
    sampler = Sampler(file, connect)
    what = f"cockpit '{sampler.set_name}'" if sampler.set_name else "kvmctl VMs on this host"
    title = f"{what}: every {interval:g} s"
    try:
        if json_out:
            for rs in sampler.rounds(interval):
                doc = {
                    "time": time.time(),
                    "interval_s": interval,
                    "vms": [r.as_dict() for r in rs],
                }
                sys.stdout.write(json.dumps(doc, indent=2 if once else None) + "\n")
                sys.stdout.flush()
                if once:
                    return
        elif once or not sys.stdout.isatty():
            for rs in sampler.rounds(interval):
                print_table(title, COLUMNS, _cells(rs))
                sys.stdout.flush()
                if once:
                    return
        else:
            with Live(console=console(), auto_refresh=False) as live:
                for rs in sampler.rounds(interval):
                    live.update(_table(title, rs), refresh=True)
    except KeyboardInterrupt:
        return
    finally:
        sampler.close()
