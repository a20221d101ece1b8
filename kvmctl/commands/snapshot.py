"""`kvmctl snapshot create|list|revert|delete`: one VM, or the whole set with --all.

    kvmctl snapshot create FILE VM NAME [--disk-only]
    kvmctl snapshot create --all FILE NAME [--disk-only]
    kvmctl snapshot list FILE [VM] [--json]
    kvmctl snapshot revert FILE VM NAME [--force]      (--all FILE NAME)
    kvmctl snapshot delete FILE VM NAME                (--all FILE NAME)

The spec comes first as in every other verb; with --all the VM is left out,
so the second positional is the group's name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from kvmctl import snapshot as api
from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json, print_table, progress_lines
from kvmctl.errors import UsageError

snapshot_app = typer.Typer(
    name="snapshot",
    help="Snapshots of one VM or of the whole set at one instant (--all).",
    no_args_is_help=True,
)
app.add_typer(snapshot_app, name="snapshot")

FirstArg = Annotated[
    str, typer.Argument(metavar="VM|NAME", help="VM name; with --all the snapshot NAME.")
]
SecondArg = Annotated[
    str | None, typer.Argument(metavar="[NAME]", help="Snapshot name (not with --all).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every VM of the set (a group snapshot).")]


def _target(first: str, second: str | None, all_vms: bool, verb: str) -> tuple[str | None, str]:
    """(vm or None for --all, snapshot name) from the positionals."""
    if all_vms:
        if second is not None:
            raise UsageError(
                f"with --all give only the group name: kvmctl snapshot {verb} --all FILE NAME"
            )
        return None, first
    if second is None:
        raise UsageError(
            f"give the VM and the snapshot name: kvmctl snapshot {verb} FILE VM NAME "
            f"(or --all FILE NAME for the whole set)"
        )
    return first, second


def _when(epoch: float | None, timespec: str = "milliseconds") -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec=timespec)


def _size(n: int | None) -> str:
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


@snapshot_app.command("create")
def create(
    file: SpecArg,
    first: FirstArg,
    second: SecondArg = None,
    all_vms: AllOpt = False,
    disk_only: Annotated[
        bool,
        typer.Option(
            "--disk-only", help="External disk-only snapshot: an overlay file takes the writes."
        ),
    ] = False,
    no_freeze: Annotated[
        bool,
        typer.Option(
            "--no-freeze", help="Do not freeze guest file systems (guests without an agent)."
        ),
    ] = False,
    connect: ConnectOpt = DEFAULT_URI,
    json_out: JsonOpt = False,
) -> None:
    """Take a snapshot of a running VM, or of every VM at one instant with --all."""
    vm, name = _target(first, second, all_vms, "create")
    if vm is None:
        group = api.create_group(
            file,
            connect,
            name,
            disk_only=disk_only,
            freeze=not no_freeze,
            progress=progress_lines(),
        )
        m = group.manifest
        if json_out:
            print_json(
                {
                    **m.as_dict(),
                    "manifest_path": str(group.manifest_path),
                    "seconds": round(group.seconds, 3),
                    "freeze_ms": round(group.freeze_ms, 3),
                    "thaw_ms": round(group.thaw_ms, 3),
                }
            )
            return
        typer.echo(
            f"group snapshot '{m.name}' of '{m.set_name}': {len(m.members)} VMs "
            f"({'disk-only' if m.disk_only else 'with memory'}) at {_when(m.instant)}; "
            f"VMs paused {m.pause_window_ms:.0f} ms; manifest {group.manifest_path}"
        )
        return
    result = api.create(
        file,
        connect,
        vm,
        name,
        disk_only=disk_only,
        freeze=False if no_freeze else None,
        progress=progress_lines(),
    )
    if json_out:
        print_json(result.__dict__)
        return
    what = "disk-only (external)" if result.kind == "external" else "internal, with memory"
    typer.echo(f"snapshot '{name}' of VM '{vm}' taken ({what}) in {result.seconds:.2f} s")
    for overlay in result.overlays:
        typer.echo(f"  overlay {overlay}")


@snapshot_app.command("list")
def list_(
    file: SpecArg,
    vm: Annotated[str | None, typer.Argument(help="Only this VM.")] = None,
    connect: ConnectOpt = DEFAULT_URI,
    json_out: JsonOpt = False,
) -> None:
    """Snapshots of the set's VMs (time, kind, size, parent, memory) and its groups."""
    listing = api.list_snapshots(file, connect, vm)
    if json_out:
        print_json(
            {
                "set": listing.set_name,
                "spec_hash": listing.spec_hash,
                "snapshots": [r.as_dict() for r in listing.snapshots],
                "groups": listing.groups,
            }
        )
        return
    rows: list[list[Any]] = [
        [
            r.vm,
            r.name + (" *" if r.current else ""),
            _when(r.created, "seconds"),  # libvirt keeps whole seconds
            r.kind,
            "yes" if r.has_memory else "no",
            _size(r.size_bytes),
            r.parent or "",
            r.group or "",
        ]
        for r in listing.snapshots
    ]
    print_table(
        f"snapshots of '{listing.set_name}' (* current)",
        ["vm", "name", "time", "kind", "memory", "size", "parent", "group"],
        rows,
    )
    if listing.groups:
        print_table(
            f"group snapshots of '{listing.set_name}'",
            ["group", "instant", "kind", "members", "pause ms", "state"],
            [
                [
                    g["name"],
                    _when(g["instant"]),
                    g["kind"],
                    ",".join(g["members"]),
                    f"{g['pause_window_ms']:.0f}",
                    ("complete" if g["complete"] else f"incomplete ({g['source']})")
                    + (", spec changed since" if g["spec_changed"] else ""),
                ]
                for g in listing.groups
            ],
        )


@snapshot_app.command("revert")
def revert(
    file: SpecArg,
    first: FirstArg,
    second: SecondArg = None,
    all_vms: AllOpt = False,
    force: Annotated[
        bool, typer.Option("--force", help="Revert even though the spec changed since.")
    ] = False,
    connect: ConnectOpt = DEFAULT_URI,
    json_out: JsonOpt = False,
) -> None:
    """Bring a VM (or with --all every VM, in depends_on order) back to a snapshot."""
    vm, name = _target(first, second, all_vms, "revert")
    if vm is None:
        result = api.revert_group(file, connect, name, force=force, progress=progress_lines())
    else:
        result = api.revert(file, connect, vm, name, force=force, progress=progress_lines())
    if json_out:
        print_json(
            {
                "set": result.set_name,
                "name": result.name,
                "group": result.group,
                "levels": result.levels,
                "seconds": round(result.seconds, 3),
                "notes": result.notes,
                "vms": {v: o.__dict__ for v, o in result.outcomes.items()},
            }
        )
        return
    for o in result.outcomes.values():
        typer.echo(f"{o.vm}: reverted to '{o.snapshot}', ready in {o.ready_seconds or 0:.1f} s")
        for note in o.notes:
            typer.echo(f"  {note}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"reverted to '{result.name}' in {result.seconds:.1f} s")


@snapshot_app.command("delete")
def delete(
    file: SpecArg,
    first: FirstArg,
    second: SecondArg = None,
    all_vms: AllOpt = False,
    connect: ConnectOpt = DEFAULT_URI,
    json_out: JsonOpt = False,
) -> None:
    """Delete a snapshot (a disk-only one is merged back first), or a whole group."""
    vm, name = _target(first, second, all_vms, "delete")
    if vm is None:
        result = api.delete_group(file, connect, name, progress=progress_lines())
    else:
        result = api.delete(file, connect, vm, name, progress=progress_lines())
    if json_out:
        print_json(result.__dict__)
        return
    for v, how in result.deleted.items():
        typer.echo(f"{v}: deleted '{name}' ({how})")
    for v, why in result.skipped.items():
        typer.echo(f"{v}: skipped ({why})")
