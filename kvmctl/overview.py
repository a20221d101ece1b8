"""`kvmctl status` as a whole: each VM's state and pinning (kvmctl.status) plus
its history: restarts by the supervisor and snapshots. Kept apart from
kvmctl.cockpit because the snapshot and supervisor modules build on it."""

from __future__ import annotations

from pathlib import Path

from kvmctl.cockpit import Session, open_session
from kvmctl.snapshot import snapshot_summary
from kvmctl.spec import Cockpit
from kvmctl.status import VmStatus, add_history, cockpit_status
from kvmctl.supervise import supervisor_state


def overview(spec: Cockpit | str | Path, uri: str) -> tuple[Session, list[VmStatus]]:
    session = open_session(spec, uri)
    assert session.virt is not None
    rows = cockpit_status(session.virt, session.plan)
    supervised = (supervisor_state(session.spec.name) or {}).get("vms", {})
    add_history(rows, supervised, snapshot_summary(session.virt, session.plan))
    return session, rows
