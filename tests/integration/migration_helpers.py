"""A plain live migration with libvirt's defaults: the baseline kvmctl's policy
is compared with (tests and bench/migrate.py)."""

from __future__ import annotations

import threading

import libvirt

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.migration import completed_stats
from kvmctl.adapters.storage import refresh_pool
from kvmctl.adapters.virt import Virt
from kvmctl.testing.lab import LabState

SOURCE = "qemu:///system"


def plain_move(
    domain: str,
    lab: LabState,
    bandwidth: int | None,
    patience: float,
    copy_storage: bool = True,
) -> dict:
    """What `virsh migrate --live --p2p --persistent --undefinesource
    --copy-storage-all --migrateuri tcp://LAB [--bandwidth N]` does, on a
    destination prepared as kvmctl prepares it (its storage pool defined).

    Without `copy_storage` (a lab with shared storage) it is `--unsafe`
    instead of `--copy-storage-all`: libvirt takes the lab's shared directory
    for local storage by its file system type, as kvmctl tells it otherwise."""
    source_pool = Virt(open_connection(SOURCE)).pool_xml("kvmctl")
    assert source_pool is not None
    there = Virt(open_connection(lab.uri))
    there.ensure_pool(source_pool, "kvmctl")
    if not copy_storage:
        # A shared pool lists a file made by the other host only after a
        # refresh (`virsh pool-refresh`), else: "no storage vol with matching name".
        refresh_pool(there.conn.storagePoolLookupByName("kvmctl"))
    conn = libvirt.open(SOURCE)
    dom = conn.lookupByName(domain)
    flags = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )
    flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK if copy_storage else libvirt.VIR_MIGRATE_UNSAFE
    params: dict[str, object] = {libvirt.VIR_MIGRATE_PARAM_URI: lab.migrate_uri}
    if bandwidth:
        params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth
    error: list[BaseException] = []

    def run() -> None:
        try:
            dom.migrateToURI3(lab.uri, params, flags)
        except libvirt.libvirtError as err:
            error.append(err)

    job = threading.Thread(target=run, daemon=True)
    job.start()
    job.join(patience)
    if job.is_alive():
        stats = dom.jobStats()
        dom.abortJob()
        job.join(120)
        conn.close()
        return {
            "converged": False,
            "seconds": patience,
            "iterations": stats.get("memory_iteration"),
            "remaining_mib": round(stats.get("data_remaining", 0) / 2**20, 1),
        }
    conn.close()
    if error:
        return {"converged": False, "error": str(error[0])}
    dest = libvirt.open(lab.uri)
    try:
        stats = completed_stats(dest.lookupByName(domain))
    finally:
        dest.close()
    return {
        "converged": True,
        "seconds": stats.get("time_elapsed", 0) / 1000,
        "downtime_ms": stats.get("downtime"),
        "iterations": stats.get("memory_iteration"),
    }
