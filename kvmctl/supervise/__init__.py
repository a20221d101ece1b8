"""Keep a cockpit's VMs running: the public API behind `kvmctl supervise`.

Inside: `daemon` (the Supervisor process: connection, main loop, reconcile
after a reconnect), `events` (what an event means, the decision acted on),
`workers` (restart and recover threads), `board` (what is known of each VM,
the JSON lines and the state file), `policy` (pure: what a stop or reset
means and what to do about it). The state file is read through
kvmctl.state.supervisor.
"""

from __future__ import annotations

from kvmctl.state.supervisor import supervisor_state
from kvmctl.supervise.daemon import Supervisor

__all__ = ["Supervisor", "supervisor_state"]
