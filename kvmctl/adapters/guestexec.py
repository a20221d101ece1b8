"""Run a program in a guest through its agent (guest-exec, then
guest-exec-status until it exits) and take its output."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import libvirt
import libvirt_qemu


@dataclass(frozen=True)
class Exited:
    code: int
    stdout: str
    stderr: str


def _command(dom: libvirt.virDomain, execute: str, arguments: dict[str, object]) -> object:
    payload = json.dumps({"execute": execute, "arguments": arguments})
    return json.loads(libvirt_qemu.qemuAgentCommand(dom, payload, 5, 0))["return"]


def run(dom: libvirt.virDomain, path: str, args: list[str], timeout: float) -> Exited:
    """The program's exit and output; libvirtError when the agent does not
    answer, TimeoutError when the program is not done within `timeout`."""
    started = _command(dom, "guest-exec", {"path": path, "arg": args, "capture-output": True})
    assert isinstance(started, dict)
    pid = started["pid"]
    deadline = time.monotonic() + timeout
    while True:
        status = _command(dom, "guest-exec-status", {"pid": pid})
        assert isinstance(status, dict)
        if status.get("exited"):
            return Exited(
                int(status.get("exitcode", -1)),
                _text(status.get("out-data")),
                _text(status.get("err-data")),
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{path} did not finish within {timeout:g} s")
        time.sleep(0.2)


def _text(data: object) -> str:
    return base64.b64decode(data).decode(errors="replace") if isinstance(data, str) else ""
