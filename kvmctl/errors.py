"""The error kinds kvmctl reports, each with the exit status docs/design.md assigns.

The CLI catches `KvmctlError` and prints `str(err)` as one sentence; anything
else escaping is a bug.
"""

from __future__ import annotations


class KvmctlError(Exception):
    """Base class: a message meant for a person, and an exit status."""

    exit_code = 1


class UsageError(KvmctlError):
    """Bad input: flags, names, URIs. Nothing was created or changed."""

    exit_code = 2


class SpecError(UsageError):
    """The cockpit spec is invalid. Carries every problem found, not just the first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class HostError(KvmctlError):
    """The host cannot satisfy the request (preflight, daemon down, KVM unusable)."""

    exit_code = 3

    def __init__(self, message: str, reasons: list[str] | None = None):
        self.reasons = list(reasons or [])
        super().__init__(message)


class ApplyError(KvmctlError):
    """Failure half-way through a change; what this run created was rolled back."""

    exit_code = 1
