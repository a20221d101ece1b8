"""One live migration job through libvirt: start it, watch it, steer it.

`migrateToURI3` blocks until the job ends, so it runs in a thread while the
caller polls the job's statistics and may abort it, switch it to post-copy or
change its downtime limit.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import libvirt
import libvirt_qemu

from kvmctl.adapters.virt import Virt
from kvmctl.planner.migration import Policy

# Events come through libvirt's event loop thread, a little after the job's
# own reply may have.
EVENT_GRACE_SECONDS = 0.5
COMPRESSION_METHODS = {"zlib": "zlib", "zstd": "zstd", "xbzrle": "xbzrle"}


@dataclass(frozen=True)
class Transfer:
    """Where and how the stream goes."""

    dest_uri: str  # the destination libvirtd, as seen from the source libvirtd (p2p)
    migrate_uri: str | None  # where the destination QEMU listens, e.g. tcp://ADDR
    copy_disks: tuple[str, ...]  # target devs copied over NBD; () = shared storage
    keep_source: bool
    tls: bool
    # Every writable disk not copied is one the destination sees as the very
    # same file, by kvmctl's marker (kvmctl.adapters.shared_storage).
    shared_proven: bool = False


def flags(policy: Policy, transfer: Transfer) -> int:
    value: int = (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
    )
    if not transfer.keep_source:
        value |= libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    if transfer.copy_disks:
        value |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
    if transfer.shared_proven:
        # libvirt refuses a disk on a local file system type ("Migration
        # without shared storage is unsafe"): it knows NFS, GFS2, Ceph and
        # the like by statfs, not a directory both hosts mount otherwise.
        value |= libvirt.VIR_MIGRATE_UNSAFE
    if transfer.tls:
        value |= libvirt.VIR_MIGRATE_TLS
    if policy.auto_converge:
        value |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    if policy.postcopy:
        value |= libvirt.VIR_MIGRATE_POSTCOPY
    if policy.multifd:
        value |= libvirt.VIR_MIGRATE_PARALLEL
    if policy.compression:
        value |= libvirt.VIR_MIGRATE_COMPRESSED
    return value


def params(policy: Policy, transfer: Transfer, dest_xml: str, persist_xml: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml,
    }
    if transfer.migrate_uri:
        out[libvirt.VIR_MIGRATE_PARAM_URI] = transfer.migrate_uri
    if transfer.copy_disks:
        out[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(transfer.copy_disks)
    if policy.bandwidth_mibps:
        out[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = policy.bandwidth_mibps
    if policy.multifd:
        out[libvirt.VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS] = policy.multifd
    if policy.compression:
        out[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = COMPRESSION_METHODS[policy.compression]
    return out


@dataclass(frozen=True)
class JobProgress:
    elapsed_ms: int
    data_total: int
    data_processed: int
    data_remaining: int
    dirty_rate: int  # pages per second
    iteration: int
    expected_downtime_ms: int | None
    postcopy: bool  # the guest runs on the destination, pages fetched on demand
    postcopy_requests: int = 0  # pages the destination asked for on a fault

    @classmethod
    def from_stats(cls, stats: dict[str, Any], postcopy: bool) -> JobProgress:
        return cls(
            elapsed_ms=int(stats.get("time_elapsed", 0)),
            data_total=int(stats.get("data_total", 0)),
            data_processed=int(stats.get("data_processed", 0)),
            data_remaining=int(stats.get("data_remaining", 0)),
            dirty_rate=int(stats.get("memory_dirty_rate", 0)),
            iteration=int(stats.get("memory_iteration", 0)),
            expected_downtime_ms=int(stats["downtime"]) if "downtime" in stats else None,
            postcopy=postcopy,
            postcopy_requests=int(stats.get("memory_postcopy_requests", 0)),
        )


def completed_stats(dom: libvirt.virDomain) -> dict[str, Any]:
    """The finished job's statistics (on the destination: 'Incoming migration')."""
    try:
        return dict(dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except libvirt.libvirtError:
        return {}


class MigrationJob:
    """A running `migrateToURI3`; `wait()` returns once it has ended."""

    def __init__(
        self, virt: Virt, name: str, transfer: Transfer, flags: int, params: dict[str, Any]
    ):
        self.conn = virt.conn
        self.dom = virt.handle(name)
        self.transfer = transfer
        self.error: libvirt.libvirtError | None = None
        self.postcopy_started = False  # kvmctl asked for the switch
        self.in_postcopy = False  # the source paused for post-copy (event or state)
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(flags, params), name=f"migrate-{name}", daemon=True
        )
        self._callback: int | None = None

    def start(self) -> None:
        # The post-copy phase of a small guest can be shorter than a poll:
        # the source's lifecycle event says it happened, whenever we look.
        with suppress(libvirt.libvirtError):
            self._callback = self.conn.domainEventRegisterAny(
                self.dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
        self._thread.start()

    def _lifecycle(self, _conn: Any, _dom: Any, event: int, detail: int, _opaque: Any) -> None:
        if (
            event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
            and detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY
        ):
            self.in_postcopy = True

    def close(self) -> None:
        """After the job: stop listening to the domain's events."""
        if self._callback is not None:
            if self.postcopy_started and not self.in_postcopy:
                time.sleep(EVENT_GRACE_SECONDS)  # let a queued event arrive
            with suppress(libvirt.libvirtError):
                self.conn.domainEventDeregisterAny(self._callback)
            self._callback = None

    def _run(self, flags: int, params: dict[str, Any]) -> None:
        try:
            self.dom.migrateToURI3(self.transfer.dest_uri, params, flags)
        except libvirt.libvirtError as err:
            self.error = err
        finally:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def progress(self) -> JobProgress | None:
        try:
            info = self.dom.jobStats()
        except libvirt.libvirtError:
            return None
        if info.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
            return None
        if self.postcopy_started and not self.in_postcopy:
            self.in_postcopy = self._paused_for_postcopy()
        return JobProgress.from_stats(info, self.in_postcopy)

    def _paused_for_postcopy(self) -> bool:
        try:
            status, reason = self.dom.state()
        except libvirt.libvirtError:
            return False
        return bool(
            status == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_POSTCOPY
        )

    def set_max_downtime(self, ms: int) -> None:
        try:
            self.dom.migrateSetMaxDowntime(ms)
        except libvirt.libvirtError:
            pass  # not in a migration phase that takes it; the start value holds

    def abort(self) -> None:
        try:
            self.dom.abortJob()
        except libvirt.libvirtError:
            pass  # ended meanwhile

    def yank(self) -> bool:
        """Shut down the job's connections to a destination that is gone.

        After an abort QEMU waits for in-flight writes on the NBD disk copy
        (and the migration stream) to finish, which on a dead link lasts as
        long as TCP retransmits: many minutes. QEMU's `yank` closes those
        sockets at once, and the cancelled job ends. It goes through the
        monitor directly (libvirt has no API for it), which libvirt records as
        a "custom-monitor" taint in the domain log."""
        try:
            listed = self._qmp("query-yank")
        except libvirt.libvirtError:
            return False
        ours = [
            i
            for i in listed
            if i.get("type") == "migration"
            or (i.get("type") == "block-node" and i.get("node-name", "").startswith("migration-"))
        ]
        if not ours:
            return False
        try:
            self._qmp("yank", {"instances": ours})
        except libvirt.libvirtError:
            return False
        return True

    def _qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        reply = libvirt_qemu.qemuMonitorCommand(self.dom, json.dumps(msg), 0)
        return json.loads(reply).get("return")

    def start_postcopy(self) -> bool:
        try:
            self.dom.migrateStartPostCopy()
        except libvirt.libvirtError:
            return False
        self.postcopy_started = True
        return True


# --- the domain around a job, by name (callers above the adapters never hold
# libvirt objects) --------------------------------------------------------------

STATE_NAMES = {
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}


def state(virt: Virt, name: str) -> str | None:
    """'running', 'paused', 'shut off', ... or None when not defined there."""
    dom = virt.lookup(name)
    if dom is None:
        return None
    try:
        return STATE_NAMES.get(dom.state()[0], "other")
    except libvirt.libvirtError:
        return None


def abort_job(virt: Virt, name: str) -> bool:
    """Cancel the domain's running job; False when it has none."""
    dom = virt.handle(name)
    if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
        return False
    with suppress(libvirt.libvirtError):
        dom.abortJob()
    return True


def arrived_stats(virt: Virt, name: str) -> dict[str, Any]:
    dom = virt.lookup(name)
    return {} if dom is None else completed_stats(dom)


def was_aborted(err: libvirt.libvirtError | None) -> bool:
    return err is not None and err.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED


def message(err: libvirt.libvirtError | None) -> str:
    return (err.get_error_message() if err is not None else "unknown error").strip()
