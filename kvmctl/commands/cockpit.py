"""The cockpit verbs: plan, apply, status, destroy, xml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kvmctl import cockpit
from kvmctl.cockpit.preview import domain_xml, plan_sessions
from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json, print_table, progress_lines
from kvmctl.commands.status_view import print_status
from kvmctl.observe.overview import overview
from kvmctl.planner import deadline
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.plan import Plan
from kvmctl.state.supervisor import safe_state_of, supervisor_state


def _plan_rows(plan: Plan) -> list[list[object]]:
    kinds = {a.vm: a for a in plan.actions}
    rows: list[list[object]] = []
    for name, p in plan.vms.items():
        action = kinds.get(name)
        change: str = action.kind if action else "?"
        if action and action.reasons:
            change += f" ({', '.join(action.reasons)})"
        rt = f"{p.realtime.policy}:{p.realtime.priority}" if p.realtime else ""
        rows.append(
            [
                name,
                "dedicated" if p.placement.dedicated else "shared",
                " ".join(f"{i}->{format_cpuset(c)}" for i, c in enumerate(p.placement.vcpu_pins)),
                format_cpuset(p.placement.emulator),
                f"{p.vm.memory.size // 1024**2} MiB"
                + (
                    f" hugepages {p.vm.memory.hugepages // 1024**2} MiB"
                    if p.vm.memory.hugepages
                    else ""
                ),
                p.shares or "",
                f"{p.quota_us * 100 // p.period_us}%" if p.quota_us and p.period_us else "",
                rt,
                p.level,
                p.vm.boot.mode,
                change,
            ]
        )
    rows += [
        [a.vm, "", "", "", "", "", "", "", "", "", "delete"]
        for a in plan.actions
        if a.kind == "delete"
    ]
    return rows


def _plan_json(plan: Plan) -> dict[str, object]:
    return {
        "set": plan.set_name,
        "spec_hash": plan.spec_hash,
        "virt_type": plan.virt_type,
        "levels": plan.levels,
        "vms": [p.summary() for p in plan.vms.values()],
        "actions": [
            {"vm": a.vm, "domain": a.domain, "kind": a.kind, "reasons": list(a.reasons)}
            for a in plan.actions
        ],
        "bridges": [
            {"bridge": b.bridge, "kind": b.kind, "network": b.network} for b in plan.bridge_actions
        ],
        "problems": plan.problems,
        "warnings": plan.warnings,
        "notes": plan.notes,
    }


@app.command()
def plan(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    facts: Annotated[
        Path | None,
        typer.Option(
            "--facts", help="Plan for the host described by this facts JSON (no host access)."
        ),
    ] = None,
    host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show what each VM gets (vCPU -> pCPU, emulator, memory, shares/cap, order) and the diff."""
    sessions = plan_sessions(file, connect, facts, host)
    multi = len(sessions) > 1 or sessions[0].host is not None
    if json_out:
        plans = [_plan_json(s.plan) | {"host": s.host, "uri": s.uri} for s in sessions]
        print_json({"set": sessions[0].spec.name, "hosts": plans} if multi else plans[0])
    else:
        for session in sessions:
            where = f" on {session.host or 'this connection'} ({session.uri})"
            _print_plan(session.plan, where if multi else "")
    if any(s.plan.problems for s in sessions):
        raise typer.Exit(3)


def _print_plan(p: Plan, where: str) -> None:
    print_table(
        f"plan for '{p.set_name}'{where} ({'KVM' if p.virt_type == 'kvm' else 'TCG emulation'})",
        [
            "vm",
            "cpu",
            "vcpu->pcpu",
            "emulator",
            "memory",
            "shares",
            "cap",
            "realtime",
            "level",
            "boot",
            "change",
        ],
        _plan_rows(p),
    )
    for b in p.bridge_actions:
        typer.echo(f"bridge {b.bridge} ({b.network}): {b.kind}")
    for line in p.channels.lines():
        typer.echo(line)
    for line in p.warnings + p.notes:
        typer.echo(f"note: {line}")
    for line in p.problems:
        typer.echo(f"problem: {line}")


@app.command()
def apply(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Create or update the cockpit: preflight, then define and start VMs in depends_on order."""
    result = cockpit.apply(file, connect, progress=progress_lines(), host=host)
    if json_out:
        print_json(
            {
                "set": result.set_name,
                "changed": result.changed,
                "seconds": round(result.seconds, 3),
                "vms": {
                    name: {
                        "action": o.action,
                        "started_at": o.started_at,
                        "ready_at": o.ready_at,
                        "ready_seconds": o.ready_seconds,
                        "since_apply_s": o.since_apply_s,
                        "deadline_s": o.deadline_s,
                        "deadline_met": o.deadline_met,
                        "boot": o.boot,
                        "warm_start_failed": o.fallback,
                        "notes": o.notes,
                        "host": result.hosts.get(name),
                    }
                    for name, o in result.outcomes.items()
                },
                "bridges": [{"action": a, "bridge": b} for a, b in result.bridges],
            }
        )
        return
    if not result.changed:
        typer.echo(f"cockpit '{result.set_name}' already matches the spec: nothing to do")
        return
    for name, o in result.outcomes.items():
        ready = f", ready in {o.ready_seconds:.1f} s" if o.ready_seconds is not None else ""
        if o.boot is not None:
            ready += f" ({o.boot})"
        if o.deadline_s is not None and o.since_apply_s is not None:
            ready += f", {deadline.verdict(o.deadline_s, o.since_apply_s)}"
        where = f" on {result.hosts[name]}" if name in result.hosts else ""
        typer.echo(f"{name}{where}: {o.action}{ready}")
        for note in o.notes:
            typer.echo(f"  {note}")
    typer.echo(f"cockpit '{result.set_name}' applied in {result.seconds:.1f} s")


@app.command()
def status(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """State, readiness, uptime, planned vs actual pCPUs, hugepages and shares/cap of every VM,
    the set's channels with their members, heartbeats and the safe state."""
    spec, rows, channels = overview(file, connect, host)
    safe = safe_state_of(supervisor_state(spec.name))
    if json_out:
        print_json(
            {
                "set": spec.name,
                "vms": [r.as_dict() for r in rows],
                "channels": [c.as_dict() for c in channels],
                "degraded": safe["degraded"],
                "safe_state": safe,
            }
        )
        return
    print_status(spec.name, rows, channels, safe)


@app.command()
def destroy(
    file: SpecArg,
    connect: ConnectOpt = DEFAULT_URI,
    host: HostOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Stop and remove the set's domains, volumes and bridges (only what kvmctl created for it)."""
    result = cockpit.destroy(file, connect, progress=progress_lines(), host=host)
    if json_out:
        print_json(result.__dict__)
        return
    typer.echo(
        f"removed {len(result.domains)} domain(s), {len(result.volumes)} volume(s), "
        f"{len(result.bridges)} bridge(s)"
    )


@app.command()
def xml(
    file: SpecArg,
    vm: Annotated[str, typer.Argument(help="VM name in the spec.")],
    connect: ConnectOpt = DEFAULT_URI,
    facts: Annotated[
        Path | None, typer.Option("--facts", help="Host facts JSON (no host access).")
    ] = None,
) -> None:
    """Print the libvirt domain XML kvmctl would define for one VM (on its host:)."""
    typer.echo(domain_xml(file, vm, connect, facts), nl=False)
