"""A cockpit set on its hosts: the public API behind `kvmctl plan`, `apply`
and `destroy`.

`open_session()` (kvmctl.session) reads one host and plans the set's VMs on
it; `apply()` preflights every host the set runs on, then creates or changes
the VMs there in depends_on order and rolls this run back on failure;
`destroy()` removes what kvmctl made for the set and nothing else.

Inside: `api` (apply/destroy over the hosts), `applier` (one plan through the
adapters, with its rollback journal `journal`), `audit` (what is in force
compared with the plan), `seed` (cloud-init seed images), `record` (which spec
file each set was last applied from), `preview` (what plan and xml show).
"""

from __future__ import annotations

from kvmctl.cockpit.api import (
    DestroyResult,
    apply,
    close_all,
    destroy,
    open_sessions,
    preflight,
    preflight_all,
)
from kvmctl.cockpit.outcome import ApplyResult, Progress
from kvmctl.session import Session, open_session, plan_options, replan

__all__ = [
    "ApplyResult",
    "DestroyResult",
    "Progress",
    "Session",
    "apply",
    "close_all",
    "destroy",
    "open_session",
    "open_sessions",
    "plan_options",
    "preflight",
    "preflight_all",
    "replan",
]
