"""The set's bridges, created before its VMs start and deleted after the VMs
that used them are gone, as the plan's bridge actions say."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Literal

from kvmctl.adapters.netlink import Netlink
from kvmctl.cockpit.journal import Journal
from kvmctl.errors import ApplyError
from kvmctl.planner.plan import Plan


def apply_bridges(
    plan: Plan,
    kind: Literal["create", "delete"],
    netlink: Netlink | None,
    journal: Journal,
    progress: Callable[[str, str], None],
) -> list[tuple[str, str]]:
    """Carry out the bridge actions of one kind; returns (action, bridge)
    pairs for the report (the create pass also lists the unchanged ones)."""
    done: list[tuple[str, str]] = []
    by_name = {b.bridge: b for b in plan.bridges}
    for action in plan.bridge_actions:
        if action.kind != kind:
            if kind == "create":
                done.append((action.kind, action.bridge))
            continue
        if netlink is None:
            raise ApplyError(
                f"bridge '{action.bridge}' is needed but no netlink adapter is available"
            )
        if kind == "create":
            bp = by_name[action.bridge]
            progress("-", f"creating bridge {bp.bridge}")
            netlink.create_bridge(bp.bridge, bp.alias, mtu=bp.mtu)
            journal.record(
                f"create bridge {bp.bridge}", partial(netlink.delete_bridge, bp.bridge, bp.alias)
            )
            if bp.host_address is not None:
                netlink.set_host_address(bp.bridge, str(bp.host_address))
        else:
            netlink.delete_bridge(action.bridge, f"kvmctl:{plan.set_name}:{action.network}")
        done.append((kind, action.bridge))
    return done
