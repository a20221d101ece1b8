"""Merging an external snapshot's overlay back into the image below it: one
libvirt block commit, followed by its block-job events (the event loop runs
since `open_connection`), with a slow poll as a safety net.
"""

from __future__ import annotations

import threading
import time

import libvirt

from kvmctl.adapters.connection import _mapped
from kvmctl.errors import ApplyError
from kvmctl.planner.snapshot import CommitStep

_JOB_DONE = {
    libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED: "completed",
    libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED: "failed",
    libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED: "canceled",
}


class BlockCommit:
    """Merge `step.top` into `step.base`; for the active image, pivot to the
    base once the job is ready, so the guest keeps every write."""

    def __init__(self, conn: libvirt.virConnect, dom: libvirt.virDomain, domain: str):
        self.conn = conn
        self.dom = dom
        self.domain = domain  # its name, for messages

    def run(self, step: CommitStep, timeout: float = 600) -> None:
        dom = self.dom
        domain = self.domain
        status: dict[str, int] = {}
        event = threading.Event()

        def on_job(_c: object, _d: object, disk: str, _t: int, st: int, _o: object) -> None:
            if disk == step.disk:
                status["last"] = st
                event.set()

        cb = self.conn.domainEventRegisterAny(
            dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, on_job, None
        )
        try:
            flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if step.active else 0
            with _mapped(f"cannot start merging {step.overlay_file} into its base ({domain})"):
                dom.blockCommit(step.disk, step.base, step.top, 0, flags)
            deadline = time.monotonic() + timeout
            while True:
                event.wait(0.5)
                event.clear()
                st = status.get("last")
                if st in _JOB_DONE:
                    if st != libvirt.VIR_DOMAIN_BLOCK_JOB_COMPLETED:
                        raise ApplyError(
                            f"merging {step.overlay_file} into its base {_JOB_DONE[st]} ({domain})"
                        )
                    return
                if step.active and (
                    st == libvirt.VIR_DOMAIN_BLOCK_JOB_READY or self._ready(dom, step)
                ):
                    with _mapped(f"cannot pivot disk {step.disk} of '{domain}' to its base"):
                        dom.blockJobAbort(step.disk, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                    return
                if not step.active and not self._job(dom, step.disk):
                    return  # finished; the event was missed
                if time.monotonic() > deadline:
                    with _mapped(f"cannot cancel the merge of {step.overlay_file}"):
                        dom.blockJobAbort(step.disk, 0)
                    raise ApplyError(
                        f"merging {step.overlay_file} into its base took over {timeout:g} s "
                        f"and was cancelled ({domain})"
                    )
        finally:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass

    def _job(self, dom: libvirt.virDomain, disk: str) -> dict[str, int]:
        with _mapped(f"cannot read the block job of disk {disk}"):
            return dict(dom.blockJobInfo(disk, 0) or {})

    def _ready(self, dom: libvirt.virDomain, step: CommitStep) -> bool:
        info = self._job(dom, step.disk)
        return bool(info) and info.get("end", 0) > 0 and info.get("cur") == info.get("end")
