"""How the supervisor names what happened from libvirt's event sequence.

The events are handed to the supervisor as they come off the connection; it
never connects here (nothing it decides on these paths needs libvirt).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from kvmctl.adapters.events_watch import DomainEvent
from kvmctl.supervise import Supervisor

pytestmark = pytest.mark.unit


def _supervisor(tmp_path: Path, policy: str) -> tuple[Supervisor, io.StringIO]:
    spec = tmp_path / "cockpit.yaml"
    spec.write_text(f"name: sv-unit\nvms:\n  a: {{restart: {{policy: {policy}}}}}\n")
    out = io.StringIO()
    return Supervisor(spec, "test:///default", out=out, directory=tmp_path), out


def _decisions(out: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return [e for e in lines if e["event"] == "decision"]


def _state(tmp_path: Path) -> dict[str, object]:
    vms: dict[str, dict[str, object]] = json.loads((tmp_path / "sv-unit.json").read_text())["vms"]
    return vms["a"]


def test_panic_reset_in_place_is_a_panic(tmp_path: Path) -> None:
    # on_crash=restart: CRASHED/PANICKED, then libvirt resets the same QEMU and
    # a reboot event follows, which belongs to the same panic.
    sup, out = _supervisor(tmp_path, "on-failure")
    now = time.time()
    sup._handle(DomainEvent("sv-unit-a", "crashed", "panicked", now))
    sup._handle(DomainEvent("sv-unit-a", "reboot", "", now))
    (decision,) = _decisions(out)
    assert (decision["cause"], decision["in_place"], decision["action"]) == (
        "panicked",
        True,
        "recover",
    )
    state = _state(tmp_path)
    assert state["last_cause"] == "panicked" and state["resets"] == 1


def test_panic_with_policy_never_is_a_panic_left_down(tmp_path: Path) -> None:
    # on_crash=destroy: CRASHED/PANICKED, then STOPPED/CRASHED; one decision,
    # named after the panic rather than a generic crash.
    sup, out = _supervisor(tmp_path, "never")
    now = time.time()
    sup._handle(DomainEvent("sv-unit-a", "crashed", "panicked", now))
    sup._handle(DomainEvent("sv-unit-a", "stopped", "crashed", now))
    (decision,) = _decisions(out)
    assert (decision["cause"], decision["action"]) == ("panicked", "ignore")
    state = _state(tmp_path)
    assert state["last_cause"] == "panicked" and state["phase"] == "down"


def test_crash_without_a_panic_report_stays_a_crash(tmp_path: Path) -> None:
    sup, out = _supervisor(tmp_path, "never")
    sup._handle(DomainEvent("sv-unit-a", "stopped", "crashed", time.time()))
    (decision,) = _decisions(out)
    assert decision["cause"] == "crashed"
