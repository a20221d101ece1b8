"""`kvmctl audit` on one host: the set's plan there checked, promise by
promise, against what runs (the checks are kvmctl.cockpit.audit)."""

from __future__ import annotations

from pathlib import Path

from kvmctl.cockpit.audit import AuditReport, audit_plan
from kvmctl.observe.status import domain_states
from kvmctl.session import Session, open_session


def audit(file: Path, uri: str, host: str | None = None) -> AuditReport:
    """The audit of the VMs the spec in `file` places on `host` (None: those
    without host:), read through `uri`."""
    session = open_session(file, uri, host=host)
    try:
        return audit_session(session)
    finally:
        session.close()


def audit_session(session: Session, states: dict[str, str] | None = None) -> AuditReport:
    """The audit of an open session; `states` (domain -> libvirt state name)
    when the caller has them already. `kvmctl audit` and the exporter both."""
    assert session.virt is not None
    states = states if states is not None else domain_states(session.virt)
    return audit_plan(session.plan, states, live_xml=session.virt.xml)
