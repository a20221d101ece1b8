"""Move one prepared VM: run the job under its policy, then either finish
(source volumes gone, result with the completed job's statistics) or recover
(the guest running, unpaused, on the source and nothing left on the
destination)."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from kvmctl.adapters import migration as job_api
from kvmctl.adapters.migration import JobProgress, MigrationJob
from kvmctl.adapters.virt import Virt
from kvmctl.errors import KvmctlError
from kvmctl.migration.preflight import Prepared
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.planner.migration import postcopy_due

POLL_SECONDS = 0.25
# After an abort QEMU cancels the stream and libvirt cleans up the destination.
ABORT_GRACE_SECONDS = 60.0

# How long an abort after losing the destination may take before kvmctl
# closes the job's sockets itself.
YANK_AFTER_SECONDS = 5.0
DESTINATION_LOST = "the destination stopped answering (keepalive)"

ProgressFn = Callable[[str, JobProgress], None]


@dataclass
class MigrationResult:
    vm: str
    domain: str
    status: str  # completed | failed | aborted
    seconds: float = 0.0
    downtime_ms: int | None = None
    bytes_moved: int | None = None
    iterations: int | None = None
    postcopy: bool = False  # the guest ran on the destination before all its memory had
    postcopy_requests: int | None = None  # pages it then fetched from the source on a fault
    pins: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    source_state: str | None = None  # after a failure: where the guest is

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_one(
    prepared: Prepared,
    source: Virt,
    dest: Virt,
    progress: ProgressFn | None = None,
) -> MigrationResult:
    policy = prepared.policy
    job = MigrationJob(
        source,
        prepared.domain,
        prepared.transfer,
        job_api.flags(policy, prepared.transfer),
        job_api.params(policy, prepared.transfer, prepared.dest_xml, prepared.persist_xml),
    )
    result = MigrationResult(prepared.vm, prepared.domain, "failed")
    job.set_max_downtime(policy.max_downtime_ms)
    started = time.monotonic()
    reason = None
    seen: list[JobProgress] = []
    try:
        job.start()
        reason = _watch(job, prepared, dest, started, seen, progress)
    except KeyboardInterrupt:
        job.abort()
        job.wait(ABORT_GRACE_SECONDS)
        reason = "interrupted (Ctrl-C)"
    finally:
        job.close()
    result.seconds = round(time.monotonic() - started, 3)
    result.postcopy = job.in_postcopy
    if job.in_postcopy:
        result.postcopy_requests = max((p.postcopy_requests for p in seen), default=0)
    if job.error is None and reason is None:
        return _finish(prepared, source, dest, result, seen[-1] if seen else None)
    lost = reason == DESTINATION_LOST
    aborted = (reason is not None and not lost) or job_api.was_aborted(job.error)
    result.status = "aborted" if aborted and not lost else "failed"
    result.error = reason or _explain(job_api.message(job.error))
    result.source_state = _recover(prepared, source, dest, job.postcopy_started)
    return result


def _watch(
    job: MigrationJob,
    prepared: Prepared,
    dest: Virt,
    started: float,
    history: list[JobProgress],
    progress: ProgressFn | None,
) -> str | None:
    """Poll the job until it ends, recording its progress in `history`; steer
    it by the policy. Returns why kvmctl aborted it, if it did."""
    policy = prepared.policy
    downtime_set = False
    reason = None
    lost_at: float | None = None
    while not job.wait(POLL_SECONDS):
        if reason is None and not dest.alive() and not job.postcopy_started:
            # Our own connection's keepalive went unanswered: libvirt's job
            # may wait much longer (e.g. while it copies disks over NBD).
            reason = DESTINATION_LOST
            lost_at = time.monotonic()
            job.abort()
        if lost_at is not None and time.monotonic() - lost_at > YANK_AFTER_SECONDS:
            # The abort is stuck on writes to the dead link: cut the sockets.
            job.yank()
            lost_at = None
        now = job.progress()
        if now is None:
            continue
        if not downtime_set:
            # Once the job runs QEMU takes the limit for this migration.
            job.set_max_downtime(policy.max_downtime_ms)
            downtime_set = True
        history.append(now)
        if progress is not None:
            progress(prepared.vm, now)
        if policy.postcopy and not job.postcopy_started and postcopy_due(policy, history):
            job.start_postcopy()
        timeout = policy.completion_timeout_s
        if reason is None and timeout is not None and time.monotonic() - started > timeout:
            if policy.on_timeout == "postcopy" and not job.postcopy_started:
                job.start_postcopy()
            elif not job.postcopy_started:
                reason = f"did not complete within {timeout:g} s (policy: abort)"
                job.abort()
    return reason


def _finish(
    prepared: Prepared,
    source: Virt,
    dest: Virt,
    result: MigrationResult,
    last: JobProgress | None,
) -> MigrationResult:
    result.status = "completed"
    stats = job_api.arrived_stats(dest, prepared.domain)
    if stats.get("data_processed"):
        result.downtime_ms = _int(stats.get("downtime"))
        result.bytes_moved = _int(stats.get("data_processed"))
        result.iterations = _int(stats.get("memory_iteration"))
        if stats.get("time_elapsed"):
            result.seconds = round(int(stats["time_elapsed"]) / 1000, 3)
    elif last is not None:
        # After post-copy libvirt keeps no completed statistics on the
        # destination: the source's last look at the job (a lower bound) is
        # what there is.
        result.bytes_moved = last.data_processed
        result.iterations = last.iteration
    pins = prepared.plan.placement
    result.pins = {f"vcpu{i}": format_cpuset(c) for i, c in enumerate(pins.vcpu_pins)}
    result.pins["emulator"] = format_cpuset(pins.emulator)
    if not prepared.transfer.keep_source:
        for copy in prepared.copies:
            if copy.pool in prepared.shared_pools:
                continue  # never: that file is the destination's disk now
            # The disk now lives on the destination; the source copy is stale.
            with suppress(KvmctlError):
                source.delete_volume(copy.pool, copy.volume)
    return result


def _recover(prepared: Prepared, source: Virt, dest: Virt, postcopy: bool) -> str:
    """After a failed or aborted job: the guest keeps running on the source,
    unpaused, and the destination keeps nothing of it."""
    state = job_api.state(source, prepared.domain)
    if postcopy and state != "running":
        return "lost in post-copy: the guest's memory was split between the hosts"
    if state == "paused":
        with suppress(KvmctlError):
            source.resume(prepared.domain)
        state = job_api.state(source, prepared.domain)
    if state != "running":
        return f"{state or 'not defined'} on the source"
    if not dest.alive():
        # A destination libvirtd that died mid-way kills its half-arrived QEMU
        # itself when it starts again (it finds an incoming job that failed).
        return "running on the source"
    with suppress(KvmctlError):
        dest.stop(prepared.domain)
    with suppress(KvmctlError):
        dest.undefine(prepared.domain)
    for copy in prepared.copies:
        with suppress(KvmctlError):
            if dest.volume_exists(copy.pool, copy.volume):
                dest.delete_volume(copy.pool, copy.volume)
    return "running on the source"


def _explain(error: str) -> str:
    if "Postcopy is not supported" in error:
        # QEMU before 8.1 opens userfaultfd with the syscall, which the kernel
        # refuses to a process without CAP_SYS_PTRACE (libvirt drops it) while
        # vm.unprivileged_userfaultfd is 0, the default.
        return (
            f"{error}: the destination's QEMU may not use userfaultfd; allow it there "
            "(sysctl vm.unprivileged_userfaultfd=1) or migrate without post-copy"
        )
    return error


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None
