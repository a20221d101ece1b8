"""`kvmctl screens` on one host: every VM's display grabbed through libvirt,
labelled with its state and uptime, composed (kvmctl.observe.screens) and
written as one PNG.

Pillow is imported only here and in kvmctl.observe.screens, when a picture is
made, so every other verb runs without it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from kvmctl.errors import HostError, KvmctlError
from kvmctl.host import threads
from kvmctl.observe.status import domain_states
from kvmctl.session import Session

if TYPE_CHECKING:
    from kvmctl.observe.screens import Box, Tile


def require_pillow() -> None:
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise HostError("kvmctl screens needs Pillow: pip install pillow") from None


def tiles(session: Session) -> list[Tile]:
    """One tile per VM of the session's plan: its screenshot when it runs
    and has a display, else why not."""
    from kvmctl.observe.screens import Tile

    virt = session.virt
    assert virt is not None
    states = domain_states(virt)
    out = []
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
        out.append(Tile(name, plan.vm.role, state, uptime, image, note))
    return out


def write_picture(session: Session, output: Path) -> list[tuple[Box, Tile]]:
    """Grab the displays, write the composed picture to `output` and return
    where each VM's tile went, in the picture's order."""
    from kvmctl.observe.screens import compose, to_png

    grabbed = tiles(session)
    image, boxes = compose(grabbed)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_bytes(to_png(image))
    tmp.replace(output)  # a viewer never sees half a picture
    by_vm = {t.vm: t for t in grabbed}
    return [(b, by_vm[b.vm]) for b in boxes]
