"""Keep a cockpit's VMs running: the public API behind `kvmctl supervise`.

Inside: `daemon` (the Supervisor process: events, restarts, its state file),
`policy` (pure: what a stop or reset means and what to do about it). The
state file is read through kvmctl.state.supervisor.
"""

from __future__ import annotations

from kvmctl.state.supervisor import supervisor_state
from kvmctl.supervise.daemon import Supervisor

__all__ = ["Supervisor", "supervisor_state"]
