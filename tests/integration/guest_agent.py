"""The QEMU guest agent through libvirt, as the integration tests drive their
guests: one agent command, and a program started with guest-exec and polled
until it exits."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu


@dataclass(frozen=True)
class ExecResult:
    exitcode: int | None
    signal: int | None
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exitcode == 0

    def fields(self) -> dict[str, str]:
        """The `key=value` words of the last output line (kvmctl-tool's format)."""
        lines = self.stdout.strip().splitlines()
        out: dict[str, str] = {}
        for word in (lines[-1] if lines else "").split():
            key, sep, value = word.partition("=")
            if sep:
                out[key] = value
        return out


def agent_command(
    dom: libvirt.virDomain,
    command: str,
    arguments: Mapping[str, Any] | None = None,
    timeout: int = 10,
) -> Any:
    """One agent command; its `return` value."""
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = dict(arguments)
    reply = libvirt_qemu.qemuAgentCommand(dom, json.dumps(msg), timeout, 0)
    return json.loads(reply)["return"]


def exec_start(
    dom: libvirt.virDomain, path: str, args: Sequence[str] = (), stdin: bytes | None = None
) -> int:
    """Start a program in the guest, its output captured; its guest pid."""
    arguments: dict[str, Any] = {"path": path, "arg": list(args), "capture-output": True}
    if stdin is not None:
        arguments["input-data"] = base64.b64encode(stdin).decode()
    return int(agent_command(dom, "guest-exec", arguments)["pid"])


def exec_status(dom: libvirt.virDomain, pid: int) -> ExecResult | None:
    """What the program `pid` did, or None while it still runs."""
    st = agent_command(dom, "guest-exec-status", {"pid": pid})
    if not st.get("exited"):
        return None
    return ExecResult(
        exitcode=st.get("exitcode"),
        signal=st.get("signal"),
        stdout=base64.b64decode(st.get("out-data", "")).decode("utf-8", "replace"),
        stderr=base64.b64decode(st.get("err-data", "")).decode("utf-8", "replace"),
    )
