"""`kvmctl doctor` and `kvmctl facts`: what this host offers, and whether a cockpit can run."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, JsonOpt, app
from kvmctl.commands._output import print_json, print_table
from kvmctl.errors import HostError, UsageError

ReprobeOpt = Annotated[
    bool,
    typer.Option(
        "--reprobe", help="Boot the KVM probe guest again instead of using this boot's result."
    ),
]
FactsOutOpt = Annotated[
    Path | None,
    typer.Option(
        "--facts-out",
        "-o",
        help="Also write the host facts as JSON (for `kvmctl plan --facts FILE`).",
        dir_okay=False,
    ),
]


@contextmanager
def _progress(message: str) -> Iterator[None]:
    """A spinner on stderr while probing, when stderr is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def _write_facts(path: Path, text: str) -> None:
    try:
        path.write_text(text + "\n")
    except OSError as err:
        raise UsageError(f"cannot write the host facts to {path}: {err.strerror}") from None


@app.command()
def doctor(
    connect: ConnectOpt = DEFAULT_URI,
    json_out: JsonOpt = False,
    reprobe: ReprobeOpt = False,
    facts_out: FactsOutOpt = None,
) -> None:
    """Probe the host: libvirt, daemons, KVM (booted probe), CPUs, hugepages, memlock, cgroups.

    Exits 0 when a cockpit can run here, 3 with the reasons when not.
    """
    from kvmctl.host.doctor import diagnose

    with _progress("probing the host (the KVM probe boots a test guest once per boot)..."):
        report = diagnose(connect, reprobe=reprobe)
    if facts_out is not None:
        _write_facts(facts_out, report.facts.to_json())
    if json_out:
        print_json(report.to_dict())
    else:
        # Rich reads [..] as markup on a terminal; details quote libvirt's own messages.
        tty = sys.stdout.isatty()
        rows = [(c.name, c.status, escape(c.detail) if tty else c.detail) for c in report.checks]
        print_table(
            f"kvmctl doctor ({report.facts.hostname or 'this host'})",
            ["check", "status", "detail"],
            rows,
        )
    if not report.ok:
        raise HostError("this host cannot run a cockpit yet:", report.failures)


@app.command()
def facts(
    connect: ConnectOpt = DEFAULT_URI,
    output: FactsOutOpt = None,
    reprobe: ReprobeOpt = False,
) -> None:
    """Print (or write with -o FILE) this host's facts as JSON, the planner's view of the host."""
    from kvmctl.host.probe import probe_host

    with _progress("probing the host..."):
        found = probe_host(connect, reprobe=reprobe)
    if found.libvirt is not None and not found.libvirt.reachable:
        raise HostError(found.libvirt.error or f"cannot reach libvirt at {connect}")
    if output is not None:
        _write_facts(output, found.to_json())
    else:
        sys.stdout.write(found.to_json() + "\n")
