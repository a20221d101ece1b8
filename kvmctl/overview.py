"""`kvmctl status` as a whole: each VM's state and pinning (kvmctl.status) plus
its history: restarts by the supervisor, snapshots and how long the last
snapshot and migration took. Kept apart from kvmctl.cockpit because the
snapshot and supervisor modules build on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmctl import history
from kvmctl.cockpit import Session, open_session
from kvmctl.snapshot import snapshot_summary
from kvmctl.spec import Cockpit
from kvmctl.status import VmStatus, add_history, cockpit_status
from kvmctl.supervise import supervisor_state


def overview(spec: Cockpit | str | Path, uri: str) -> tuple[Session, list[VmStatus]]:
    session = open_session(spec, uri)
    return session, gather(session)


def gather(session: Session, supervisor: dict[str, Any] | None = None) -> list[VmStatus]:
    """The status rows of an open session (on its connection). `supervisor`:
    the supervisor state already read by the caller, else it is read here."""
    assert session.virt is not None
    rows = cockpit_status(session.virt, session.plan)
    if supervisor is None:
        supervisor = supervisor_state(session.spec.name) or {}
    add_history(
        rows,
        supervisor.get("vms") or {},
        snapshot_summary(session.virt, session.plan),
        history.read(session.spec.name),
    )
    return rows
