"""`kvmctl screens FILE -o cockpit.png`: all displays in one picture."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import psutil
import typer

from kvmctl import cockpit
from kvmctl.commands._app import DEFAULT_URI, ConnectOpt, HostOpt, JsonOpt, SpecArg, app
from kvmctl.commands._output import print_json, print_table
from kvmctl.errors import HostError, KvmctlError
from kvmctl.host import threads
from kvmctl.observe.status import STATE_NAMES

if TYPE_CHECKING:
    from kvmctl.observe.screens import Box, Tile


def _tiles(session: cockpit.Session) -> list[Tile]:
    from kvmctl.observe.screens import Tile

    virt = session.virt
    assert virt is not None
    states = {d.name: STATE_NAMES.get(d.state, "?") for d in virt.domains()}
    tiles = []
    for name, plan in session.plan.vms.items():
        state = states.get(plan.domain, "absent")
        uptime = None
        image = None
        note = ""
        if state in ("running", "paused"):
            pid = threads.qemu_pid(plan.domain)
            if pid is not None:
                try:
                    uptime = time.time() - psutil.Process(pid).create_time()
                except psutil.Error:
                    pass
            if plan.vm.display is None:
                note = "no display in the spec"
            else:
                try:
                    image = virt.screenshot(plan.domain)
                except KvmctlError as err:
                    note = f"no picture: {err}"[:60]
        tiles.append(Tile(name, plan.vm.role, state, uptime, image, note))
    return tiles


def _write(tiles: list[Tile], output: Path) -> list[Box]:
    from kvmctl.observe.screens import compose, to_png

    image, boxes = compose(tiles)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_bytes(to_png(image))
    tmp.replace(output)  # a viewer never sees half a picture
    return boxes


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
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise HostError("kvmctl screens needs Pillow: pip install pillow") from None
    session = cockpit.open_session(file, connect, host=host)
    try:
        while True:
            tiles = _tiles(session)
            boxes = _write(tiles, output)
            if json_out:
                print_json(
                    {
                        "set": session.spec.name,
                        "file": str(output),
                        "tiles": [
                            {**b.as_dict(), "state": t.state, "uptime_s": t.uptime_s}
                            for b, t in zip(boxes, _in_box_order(tiles, boxes), strict=True)
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
                        for b, t in zip(boxes, _in_box_order(tiles, boxes), strict=True)
                    ],
                )
            if watch is None:
                return
            time.sleep(watch)
    except KeyboardInterrupt:
        return


def _in_box_order(tiles: list[Tile], boxes: list[Box]) -> list[Tile]:
    by_vm = {t.vm: t for t in tiles}
    return [by_vm[b.vm] for b in boxes]
