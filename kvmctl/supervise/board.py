"""What the supervisor knows about its VMs, and what it says about them.

The main thread and the restart/recover workers share one `Board`: every
change is made under its lock, `changed` wakes a worker that waits for a
dependency, each decision or observation is one JSON line on the output and
the state of every VM is written to the state file that
`kvmctl.state.supervisor.supervisor_state()` reads back for `kvmctl status`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from kvmctl.state.statefile import write_atomic
from kvmctl.state.supervisor import state_path
from kvmctl.supervise.policy import RestartPolicy

if TYPE_CHECKING:
    from kvmctl.supervise.heartbeat import HeartbeatView


@dataclass
class VmWatch:
    """What the supervisor knows about one VM. Changed under Board.lock."""

    name: str
    domain: str
    policy: RestartPolicy
    depends_on: list[str]
    probe: str
    ready_timeout: float
    phase: str = "unknown"  # running, recovering, waiting, restarting, down, gave-up, absent
    ready: bool = False
    history: list[float] = field(default_factory=list)  # times of counted restarts
    restarts: int = 0  # restarts the supervisor made (start of a stopped VM)
    resets: int = 0  # resets in place it saw (watchdog, panic, reboot)
    last_cause: str | None = None
    last_change: float = 0.0
    epoch: int = 0  # bumped by every decision: a worker of an older one stands down
    pending_watchdog: float = 0.0  # a watchdog fired: the stop that follows is a failure
    pending_panic: float = 0.0  # the guest panicked: the crashed stop that follows is that panic

    def as_dict(self, now: float) -> dict[str, Any]:
        recent = [t for t in self.history if now - t < self.policy.window]
        return {
            "domain": self.domain,
            "phase": self.phase,
            "ready": self.ready,
            "restarts": self.restarts,
            "resets": self.resets,
            "restarts_in_window": len(recent),
            "policy": self.policy.policy,
            "max": self.policy.max,
            "window_s": self.policy.window,
            "gave_up": self.phase == "gave-up",
            "last_cause": self.last_cause,
            "last_change": self.last_change,
        }


class Board:
    def __init__(
        self,
        set_name: str,
        spec_path: Path,
        uri: str,
        vms: dict[str, VmWatch],
        out: IO[str],
        directory: Path,
    ):
        self.set_name = set_name
        self.spec_path = spec_path
        self.uri = uri
        self.vms = vms
        self.by_domain = {w.domain: w for w in vms.values()}
        self.out = out
        self.directory = directory
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._out_lock = threading.Lock()
        self.started_at = time.time()
        self.connected = False
        # Heartbeats listened to (vm -> view), the safe state's summary, and
        # who hears of a phase change (set by the daemon).
        self.heartbeats: dict[str, HeartbeatView] = {}
        self.safe: Callable[[], dict[str, Any]] | None = None
        self.on_phase: Callable[[VmWatch], None] | None = None

    def log(self, event: str, vm: str | None = None, **fields: Any) -> None:
        """One JSON line per decision or observation."""
        now = time.time()
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "ts": round(now, 3),
            "set": self.set_name,
            "event": event,
        }
        if vm is not None:
            record["vm"] = vm
        record.update(fields)
        line = json.dumps(record, default=str)
        with self._out_lock:
            self.out.write(line + "\n")
            self.out.flush()

    def write_state(self, active: bool = True) -> None:
        now = time.time()
        with self.lock:
            vms = {w.name: w.as_dict(now) for w in self.vms.values()}
            data = {
                "set": self.set_name,
                "spec": str(self.spec_path),
                "uri": self.uri,
                "pid": os.getpid(),
                "active": active,
                "connected": self.connected,
                "started_at": self.started_at,
                "updated_at": now,
                "vms": vms,
            }
            for name, beat in self.heartbeats.items():
                vms[name]["heartbeat"] = beat.as_dict()
            if self.safe is not None:
                data["safe_state"] = self.safe()
            path = state_path(self.set_name, self.directory)
            write_atomic(path, json.dumps(data, indent=2) + "\n")

    def set_phase(self, w: VmWatch, phase: str, *, ready: bool | None = None) -> None:
        with self.lock:
            w.phase = phase
            if ready is not None:
                w.ready = ready
            w.last_change = time.time()
            self.changed.notify_all()
        self.write_state()
        if self.on_phase is not None:
            self.on_phase(w)
