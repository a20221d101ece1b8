"""`kvmctl audit FILE`: every promise of the plan checked where it takes effect."""

from __future__ import annotations

from typing import Annotated

import typer

from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json, print_table
from kvmctl.observe.audit import audit as run_audit


@app.command()
def audit(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    json_out: JsonOpt = False,
    all_checks: Annotated[
        bool, typer.Option("--all", help="List every check, not only the drifted ones.")
    ] = False,
) -> None:
    """Compare what runs with the plan: thread pins, RT policy, hugepages, cgroup
    shares/quota, NIC bridges. Exit status 1 when anything drifted.

    `kvmctl apply` repairs drifted pins, vCPU scheduling, shares and caps live.
    """
    report = run_audit(file, connect, host)
    if json_out:
        print_json(report.as_dict())
    else:
        rows = report.checks if all_checks else report.drift
        print_table(
            f"audit of '{report.set_name}': "
            + (f"{len(report.drift)} drift(s)" if report.drift else "no drift")
            + f" in {len(report.checks)} checks",
            ["vm", "item", "planned", "actual", "ok", "apply repairs"],
            [
                [
                    c.vm,
                    c.item,
                    c.planned,
                    c.actual,
                    "yes" if c.ok else "DRIFT",
                    "" if c.ok else ("yes" if c.tunable else "no"),
                ]
                for c in rows
            ],
        )
    if report.drift:
        raise typer.Exit(1)
