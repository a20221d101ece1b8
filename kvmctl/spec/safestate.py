"""A VM's heartbeat and the set's declared safe state (docs/supervise.md).

The heartbeat travels over a serial channel kvmctl declares itself for the
VM (`HEARTBEAT_CHANNEL`, planned like any `kind: serial` channel). Rules that
relate these fields to the rest of the spec live in `kvmctl.spec.semantics`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from kvmctl.spec.types import Duration, Model, VcpuLimit

# The serial channel that carries a VM's heartbeat: the guest writes to
# /dev/virtio-ports/org.kvmctl.heartbeat.
HEARTBEAT_CHANNEL = "heartbeat"

SafeAction = Literal["pause", "cap", "restart"]
# The triggers, as fields of SafeState and as the supervisor names them.
TRIGGERS = ("heartbeat_missed", "crashed", "gave_up")


class Heartbeat(Model):
    """The guest sends a beat every `period`; no beat for `deadline` is a miss."""

    period: Duration
    deadline: Duration

    @field_validator("period")
    @classmethod
    def _period(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("must be at least 10ms")
        return value

    @field_validator("deadline")
    @classmethod
    def _deadline(cls, value: float, info: ValidationInfo) -> float:
        period = info.data.get("period")
        if period is not None and value <= period:
            raise ValueError(
                f"{value:g} s is not longer than the period ({period:g} s): every beat "
                "would be late"
            )
        return value


class SafeState(Model):
    """What `kvmctl supervise` does when a watched VM misses its heartbeat
    deadline, crashes, or spends its restart budget. Each trigger lists its
    actions; a trigger left out is not acted on. Any trigger marks the set
    degraded (an event and a metric) until it clears."""

    # The VMs whose failures drive the safe state. Default: the safety VMs.
    watch: list[str] | None = None
    # The VMs pause and cap act on, to free CPU for the watched ones.
    shed: list[str] = Field(default_factory=list)
    # The CPU limit of the cap action (share of each vCPU).
    cap: VcpuLimit | None = None
    heartbeat_missed: list[SafeAction] | None = None
    crashed: list[SafeAction] | None = None
    gave_up: list[SafeAction] | None = None

    @field_validator("heartbeat_missed", "crashed", "gave_up")
    @classmethod
    def _once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("lists an action twice")
        if value is not None and {"pause", "cap"} <= set(value):
            raise ValueError("pause and cap both free CPU: give one")
        return value

    def actions(self, trigger: str) -> list[SafeAction] | None:
        found: list[SafeAction] | None = getattr(self, trigger)
        return found
