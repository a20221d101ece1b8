"""What an apply reports: each VM's outcome (action, boot, readiness and its
deadline) and the run's result; shared by the Applier, the warm-start path,
the readiness history and the supervisor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Progress = Callable[[str, str], None]  # (vm, what is happening)


@dataclass
class VmOutcome:
    vm: str
    action: str
    started_at: float | None = None  # wall clock, when resumed
    ready_at: float | None = None
    ready_seconds: float | None = None
    # From the start of the run (see Applier's `since`) to ready, and its ready.deadline.
    since_apply_s: float | None = None
    deadline_s: float | None = None
    deadline_met: bool | None = None
    # "warm" (restored from its saved state) or "cold" (booted), when it started.
    boot: str | None = None
    fallback: str | None = None  # why a warm start failed and the VM booted cold
    notes: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    set_name: str
    outcomes: dict[str, VmOutcome]
    bridges: list[tuple[str, str]]  # (action, bridge)
    notes: list[str]
    seconds: float
    hosts: dict[str, str] = field(default_factory=dict)  # VM -> host, in a multi-host set

    @property
    def changed(self) -> bool:
        return any(o.action != "unchanged" for o in self.outcomes.values()) or any(
            a != "unchanged" for a, _ in self.bridges
        )
