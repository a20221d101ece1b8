"""What every spec rule yields, and the phrases the rules share."""

from __future__ import annotations

from kvmctl.spec.models import Cockpit

Path = tuple[str | int, ...]
Problem = tuple[Path, str]  # (field path, message); the loader adds file:line


def unknown_vm(spec: Cockpit, name: str) -> str:
    return f"unknown VM '{name}' (known: {', '.join(sorted(spec.vms))})"


def host_key(host: str | None) -> str:
    return host if host is not None else "(no host:)"
