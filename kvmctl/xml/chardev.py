"""Character devices: ``<serial>``, ``<console>`` and ``<channel>``."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, value
from kvmctl.xml.convert import INT, ONOFF

GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"


class Serial(XMLModel, tag="serial"):
    """A pty serial port can also be logged to ``log_file``, which is how a
    readiness marker printed by the guest is seen without attaching."""

    type: Literal["pty", "file", "unix", "null"] = value("@type", default="pty")
    source_path: str | None = value("source/@path", default=None)
    log_file: str | None = value("log/@file", default=None)
    log_append: bool | None = value("log/@append", ONOFF, default=None)
    target_port: int | None = value("target/@port", INT, default=None)

    def _validate(self) -> None:
        if self.type in ("file", "unix") and self.source_path is None:
            raise ValueError(f"serial: type {self.type!r} needs source_path")
        if self.log_append is not None and self.log_file is None:
            raise ValueError("serial: log_append needs log_file")


class Console(XMLModel, tag="console"):
    type: Literal["pty", "file", "unix", "null"] = value("@type", default="pty")
    source_path: str | None = value("source/@path", default=None)
    target_type: Literal["serial", "virtio"] | None = value("target/@type", default=None)
    target_port: int | None = value("target/@port", INT, default=None)


class Channel(XMLModel, tag="channel"):
    """Defaults describe the QEMU guest agent channel; libvirt picks the
    socket path when ``source_path`` is left out."""

    type: Literal["unix", "pty"] = value("@type", default="unix")
    source_mode: Literal["bind", "connect"] | None = value("source/@mode", default=None)
    source_path: str | None = value("source/@path", default=None)
    target_type: Literal["virtio"] = value("target/@type", default="virtio")
    target_name: str | None = value("target/@name", default=GUEST_AGENT_CHANNEL)
