"""`kvmctl status` as a whole: each VM's state and pinning (kvmctl.observe.status) plus
its history: restarts by the supervisor, snapshots, how long the last
snapshot and migration took, and its last boot to ready against its deadline.
Kept apart from kvmctl.cockpit because the snapshot and supervisor modules
build on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvmctl.errors import KvmctlError
from kvmctl.observe.channels import ChannelStatus, channel_status, members_of
from kvmctl.observe.status import VmStatus, add_history, cockpit_status
from kvmctl.planner.hosts import host_groups
from kvmctl.planner.plan import domain_name
from kvmctl.session import Session, open_session
from kvmctl.snapshot import snapshot_summary
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state import history
from kvmctl.state.supervisor import supervisor_state


def overview(
    spec: Cockpit | str | Path, uri: str, host: str | None = None
) -> tuple[Cockpit, list[VmStatus], list[ChannelStatus]]:
    """Status rows of the set's VMs and channels on each of its hosts (or only
    `host`, on `uri`). In a multi-host set a host that cannot be reached gives
    its VMs the state `unreachable` instead of failing the whole status (its
    channels are left out)."""
    spec = spec if isinstance(spec, Cockpit) else load_spec(spec)
    groups = host_groups(spec, uri, host)
    if len(groups) == 1:
        return spec, *_gather_closed(open_session(spec, groups[0].uri, host=groups[0].name))
    rows: list[VmStatus] = []
    channels: list[ChannelStatus] = []
    for group in groups:
        try:
            session = open_session(spec, group.uri, host=group.name)
        except KvmctlError as err:
            rows += [
                VmStatus(
                    vm=vm,
                    domain=domain_name(spec.name, vm),
                    state="unreachable",
                    host=group.name,
                    drift=[f"{group.label} ({group.uri}): {err}"],
                )
                for vm in group.vms
            ]
            continue
        more, theirs = _gather_closed(session)
        rows += more
        channels += theirs
    return spec, rows, channels


def _gather_closed(session: Session) -> tuple[list[VmStatus], list[ChannelStatus]]:
    try:
        rows = gather(session)
        return rows, gather_channels(session, rows)
    finally:
        session.close()


def gather_channels(session: Session, rows: list[VmStatus]) -> list[ChannelStatus]:
    """The session's channels, each member's live XML read when it runs."""
    assert session.virt is not None
    channels = session.plan.channels
    running = {r.vm for r in rows if r.state in ("running", "paused")}
    virt, vms = session.virt, session.plan.vms
    live: dict[str, str] = {}
    for vm in members_of(channels) & running:
        try:
            live[vm] = virt.xml(vms[vm].domain)
        except KvmctlError:
            pass  # stopped since the rows were read: shown as not running
    return channel_status(channels, live)


def gather(session: Session, supervisor: dict[str, Any] | None = None) -> list[VmStatus]:
    """The status rows of an open session (on its connection). `supervisor`:
    the supervisor state already read by the caller, else it is read here."""
    assert session.virt is not None
    rows = cockpit_status(session.virt, session.plan, session.remote)
    for row in rows:
        row.host = session.host
    if supervisor is None:
        supervisor = supervisor_state(session.spec.name) or {}
    add_history(
        rows,
        supervisor.get("vms") or {},
        snapshot_summary(session.virt, session.plan),
        history.read(session.spec.name),
    )
    return rows
