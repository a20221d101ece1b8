"""What the supervisor does when a VM stops, crashes or is reset (pure).

No libvirt and no clock here: the supervisor passes in the VM's restart
policy from the spec, what happened (a `Cause`), the times of the restarts
already made and the current time, and gets back a `Decision`. Everything is
a function of its arguments, so the rules are tested as tables.

Rules:
- An operator stopping a VM (virsh destroy, kvmctl destroy or apply) is never
  undone, whatever the policy.
- `never`: nothing is restarted. `on-failure`: only failures are (a crash, a
  killed QEMU, a watchdog, a panic, a VM that did not become ready again).
  `always`: a guest that shut itself down cleanly is started again too.
- At most `max` restarts within any `window` seconds; the next failure gives
  up (and a VM the hypervisor keeps resetting in place is powered off).
- Restarts back off: the first in a window is immediate, then base, 2x base,
  4x base ... up to a cap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PolicyName = Literal["always", "on-failure", "never"]
DecisionKind = Literal["restart", "recover", "ignore", "give-up"]

# What ended (or reset) a VM, as the supervisor names it.
FAILURES = frozenset(
    {
        "crashed",  # libvirt: the guest crashed (shut off, reason crashed)
        "killed",  # the QEMU process died (SIGKILL, OOM, abort)
        "panicked",  # the guest kernel panicked (pvpanic)
        "watchdog",  # the guest stopped petting its watchdog
        "not-ready",  # reset or restarted, but not ready within its timeout
        "start-failed",  # a restart attempt failed
        "vanished",  # found shut off after the supervisor lost sight of it
        "heartbeat",  # it runs but missed its heartbeat deadline (safe_state: restart)
    }
)
# Failures of a VM that still runs: it is powered off before the restart.
HUNG = frozenset({"not-ready", "heartbeat"})
CLEAN = frozenset({"shutdown"})  # the guest powered itself off
OPERATOR = frozenset({"destroyed", "migrated", "saved", "from-snapshot"})


@dataclass(frozen=True)
class RestartPolicy:
    policy: PolicyName = "on-failure"
    max: int = 5
    window: float = 60.0
    backoff: float = 1.0  # seconds before the second restart in a window
    backoff_max: float = 30.0


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    reason: str
    delay: float = 0.0
    counts: bool = False  # recorded as a restart against the budget
    recent: int = 0  # restarts within the window before this one

    def as_dict(self) -> dict[str, object]:
        return {
            "action": self.kind,
            "reason": self.reason,
            "delay_s": round(self.delay, 3),
            "restarts_in_window": self.recent,
        }


def recent_restarts(history: Iterable[float], window: float, now: float) -> int:
    """Restarts made within the last `window` seconds before `now`."""
    return sum(1 for t in history if now - t < window)


def backoff_delay(recent: int, base: float, cap: float) -> float:
    """0 for the first restart in a window, then base, 2*base, 4*base ... <= cap."""
    if recent <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (recent - 1)))


def decide(
    policy: RestartPolicy,
    cause: str,
    history: Sequence[float],
    now: float,
    *,
    in_place: bool = False,
) -> Decision:
    """What to do about a VM that stopped, or was reset in place (`in_place`:
    same QEMU process, e.g. a watchdog reset), for `cause`.

    `restart`: start it again after `delay`. `recover`: the hypervisor reset it
    in place; wait for it to become ready again. `give-up`: the budget is
    spent. `ignore`: leave it as it is.
    """
    recent = recent_restarts(history, policy.window, now)
    if cause in OPERATOR:
        return Decision("ignore", f"stopped by an operator ({cause})", recent=recent)
    if cause == "reboot":
        # An orderly reboot or a reset the guest asked for: not a failure.
        return Decision("recover", "the guest was reset; waiting for it to be ready", recent=recent)
    failure = cause in FAILURES
    if not failure and cause not in CLEAN:
        return Decision("ignore", f"unknown cause '{cause}'", recent=recent)
    if policy.policy == "never":
        if in_place:
            return Decision(
                "recover", f"{cause}: reset by the hypervisor (restart policy never)", recent=recent
            )
        return Decision("ignore", f"{cause}: restart policy is never", recent=recent)
    if not failure and policy.policy == "on-failure":
        return Decision("ignore", "clean shutdown: restart policy is on-failure", recent=recent)
    if recent >= policy.max:
        return Decision(
            "give-up",
            f"{cause}: {recent} restart(s) within {policy.window:g} s already "
            f"(max {policy.max}): giving up",
            recent=recent,
        )
    if in_place:
        return Decision(
            "recover",
            f"{cause}: reset in place by the hypervisor; waiting for it to be ready",
            counts=True,
            recent=recent,
        )
    delay = backoff_delay(recent, policy.backoff, policy.backoff_max)
    return Decision(
        "restart",
        f"{cause}: restart {recent + 1} of at most {policy.max} within {policy.window:g} s",
        delay=delay,
        counts=True,
        recent=recent,
    )


def stop_cause(detail: str) -> str:
    """The cause for a libvirt 'stopped' event detail or shut-off reason."""
    return {
        "shutdown": "shutdown",
        "destroyed": "destroyed",
        "crashed": "crashed",
        "failed": "killed",
        "migrated": "migrated",
        "saved": "saved",
        "from-snapshot": "from-snapshot",
    }.get(detail, "vanished")


def waiting_on(depends_on: Iterable[str], ready: Mapping[str, bool]) -> list[str]:
    """The dependencies that are not ready: a VM is (re)started only once
    every VM it depends on is running and ready again."""
    return [d for d in depends_on if not ready.get(d, False)]
