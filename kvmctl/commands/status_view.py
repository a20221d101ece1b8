"""What `kvmctl status` prints without --json: the VMs' table, the set's
channels with their members, then heartbeats and the safe state."""

from __future__ import annotations

from typing import Any

import typer

from kvmctl.commands._output import print_table
from kvmctl.observe.channels import ChannelStatus
from kvmctl.observe.status import VmStatus
from kvmctl.planner import deadline


def print_status(
    name: str, rows: list[VmStatus], channels: list[ChannelStatus], safe: dict[str, Any]
) -> None:
    print_table(
        f"cockpit '{name}'",
        [
            "vm",
            "host",
            "state",
            "ready",
            "uptime",
            "vcpus planned",
            "vcpus actual",
            "emulator",
            "sched",
            "hugepages",
            "shares",
            "quota",
            "restarts",
            "snapshots",
            "boot",
            "drift",
        ],
        [
            [
                r.vm,
                r.host or "-",
                r.state,
                _ready_cell(r),
                f"{r.uptime_s:.0f}s" if r.uptime_s is not None else "",
                " ".join(r.vcpus_planned),
                " ".join(r.vcpus_actual),
                f"{r.emulator_actual or '-'} (plan {r.emulator_planned})",
                " ".join(r.vcpu_sched),
                _hugepages_cell(r),
                r.shares if r.shares is not None else "",
                r.quota_us if r.quota_us is not None else "",
                "-" if r.restarts is None else r.restarts,
                _snapshots_cell(r),
                _boot_cell(r),
                "; ".join(r.drift) or "none",
            ]
            for r in rows
        ],
    )
    if channels:
        print_table(
            f"channels of '{name}'",
            ["channel", "kind", "host end", "members"],
            [
                [
                    c.channel,
                    c.kind,
                    c.host_end + (f" ({c.size_mib} MiB)" if c.size_mib else ""),
                    ", ".join(m.cell() for m in c.members),
                ]
                for c in channels
            ],
        )
    for line in _safe_lines(rows, safe):
        typer.echo(line)


def _safe_lines(rows: list[VmStatus], safe: dict[str, Any]) -> list[str]:
    """Heartbeats and the safe state, below the table."""
    lines = []
    for r in rows:
        if r.heartbeat_missed is not None:
            age = "-" if r.heartbeat_age_s is None else f"{r.heartbeat_age_s:.1f} s ago"
            verdict = "MISSED" if r.heartbeat_missed else "ok"
            lines.append(f"heartbeat {r.vm}: {verdict}, last beat {age}")
    if safe.get("left_in_force"):
        held = [f"{vm} paused" for vm in safe.get("paused") or []]
        held += [f"{vm} capped" for vm in safe.get("uncapped") or {}]
        lines.append(
            f"DEGRADED: safe state left in force by a supervisor that is gone ({', '.join(held)});"
            " `kvmctl supervise` takes it over and lifts it once the set is normal"
        )
    elif safe["degraded"]:
        active = ", ".join(safe.get("active") or [])
        lines.append(f"DEGRADED: safe state in force ({active})")
    return lines


def _ready_cell(r: VmStatus) -> str:
    ready = {True: "yes", False: "no", None: "-"}[r.ready]
    if r.ready_deadline_s is None or r.last_ready_s is None:
        return ready
    verdict = deadline.verdict(r.ready_deadline_s, r.last_ready_s)
    return f"{ready}, {verdict}" + (f", {r.last_boot} start" if r.last_boot else "")


def _boot_cell(r: VmStatus) -> str:
    """The boot mode, and for a warm one the saved state it would start from."""
    state = r.warm_state
    if state is None:
        return r.boot_mode if r.boot_mode == "cold" else f"{r.boot_mode}, no saved state"
    if "error" in state:
        return f"{r.boot_mode}, saved state unreadable"
    fit = "current" if state.get("current") else "outdated"
    return f"{r.boot_mode}, saved for {state.get('spec_hash')} ({fit})"


def _hugepages_cell(r: VmStatus) -> str:
    if not r.hugepages_planned_kib:
        return "-"
    actual = "?" if r.hugepages_actual_kib is None else r.hugepages_actual_kib // 1024
    return f"{actual}/{r.hugepages_planned_kib // 1024} MiB"


def _snapshots_cell(r: VmStatus) -> str:
    if not r.snapshots:
        return "0"
    took = f", took {r.last_snapshot_seconds:.1f} s" if r.last_snapshot_seconds is not None else ""
    return f"{r.snapshots} (latest {r.latest_snapshot}{took})"
