"""Screens and input: ``<graphics>``, ``<video>`` and ``<input>``."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, value
from kvmctl.xml.convert import INT, YESNO


class Graphics(XMLModel, tag="graphics"):
    """VNC on an address (``listen``) or a UNIX ``socket``; ``port=-1`` with
    ``autoport`` lets libvirt choose a free port at start."""

    type: Literal["vnc", "spice"] = value("@type", default="vnc")
    port: int | None = value("@port", INT, default=None)
    autoport: bool | None = value("@autoport", YESNO, default=None)
    listen: str | None = value("@listen", default=None)
    socket: str | None = value("@socket", default=None)

    def _validate(self) -> None:
        if self.listen is not None and self.socket is not None:
            raise ValueError("graphics: listen address and socket exclude each other")


class Video(XMLModel, tag="video"):
    """``vram`` in KiB. The resolution hint needs libvirt 7.9 or later."""

    model: Literal["vga", "virtio", "cirrus", "qxl", "bochs", "ramfb", "none"] = value(
        "model/@type", default="vga"
    )
    vram: int | None = value("model/@vram", INT, default=None)
    heads: int | None = value("model/@heads", INT, default=None)
    primary: bool | None = value("model/@primary", YESNO, default=None)
    xres: int | None = value("model/resolution/@x", INT, default=None)
    yres: int | None = value("model/resolution/@y", INT, default=None)

    def _validate(self) -> None:
        if (self.xres is None) != (self.yres is None):
            raise ValueError("video: resolution needs both xres and yres")


class Input(XMLModel, tag="input"):
    """A tablet gives absolute pointer positions, which VNC clients need."""

    type: Literal["tablet", "mouse", "keyboard"] = value("@type")
    bus: Literal["usb", "ps2", "virtio"] | None = value("@bus", default=None)
