"""Bulk domain statistics (virConnectGetAllDomainStats) as plain dicts.

One call returns CPU time, per-vCPU time and run-queue delay, balloon and
state for every running domain asked for, so `kvmctl top` costs the daemon
one round trip per refresh however many VMs run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import libvirt

from kvmctl.errors import KvmctlError

_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | libvirt.VIR_DOMAIN_STATS_BALLOON
)


def domain_stats(
    conn: libvirt.virConnect, names: Iterable[str] | None = None
) -> dict[str, dict[str, Any]]:
    """name -> libvirt's typed parameters ('cpu.time', 'vcpu.0.time',
    'vcpu.0.delay', 'balloon.current', 'state.state', ...) of the running
    domains among `names` (all running domains when None)."""
    try:
        if names is None:
            records = conn.getAllDomainStats(
                _STATS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
            )
        else:
            doms = []
            for name in names:
                try:
                    dom = conn.lookupByName(name)
                    if dom.isActive():
                        doms.append(dom)
                except libvirt.libvirtError:
                    continue  # not defined (any more)
            records = conn.domainListGetStats(doms, _STATS, 0) if doms else []
    except libvirt.libvirtError as err:
        raise KvmctlError(f"cannot read domain statistics: {err.get_error_message()}") from None
    return {dom.name(): dict(stats) for dom, stats in records}
