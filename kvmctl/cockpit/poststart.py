"""The post-start step: what kvmctl does to a freshly started, still paused
QEMU that libvirt does not do itself, before the guest runs.

- Real-time vCPUs. With RT group scheduling on, libvirt's `<vcpusched>` fails
  ("Cannot set scheduler parameters ... Operation not permitted") because the
  domain's cgroups start with no RT budget; kvmctl gives the cgroups their
  budget and sets the vCPU threads' policy itself (docs/design.md,
  "Post-start step").
- NIC shaping. libvirt's `<bandwidth>` needs the sfq qdisc, which not every
  kernel has; kvmctl shapes the tap with htb/tbf instead.

One step for every path that starts a QEMU here: apply (create, restart,
start, and the supervisor's restarts, which run through the Applier) and a
snapshot revert (libvirt starts a new QEMU). A migration's destination is
another host, out of this process's reach: `kvmctl apply` there does it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from kvmctl.adapters.netlink import Netlink
from kvmctl.errors import ApplyError
from kvmctl.host import rt, threads
from kvmctl.planner.plan import VmPlan


def after_start(
    vp: VmPlan,
    *,
    rt_by_thread: bool,
    netlink: Callable[[], Netlink] | None,
    rt_steps: list[rt.RtStep],
    net_lock: AbstractContextManager[object] | None = None,
) -> list[str]:
    """Shape the VM's NICs and make its vCPUs real-time as planned; returns
    what was done, for the notes. `netlink` gives the socket to shape with
    (None: no netlink here, so nothing can be shaped); `rt_steps` collects the
    budget changes so the caller can give them back after the domain stops."""
    notes = shape(vp, netlink, net_lock)
    if vp.realtime is not None and rt_by_thread:
        notes += make_realtime(vp, rt_steps)
    return notes


def shape(
    vp: VmPlan,
    netlink: Callable[[], Netlink] | None,
    net_lock: AbstractContextManager[object] | None = None,
) -> list[str]:
    shaped = [n for n in vp.nics if n.bandwidth is not None]
    if not shaped:
        return []
    if netlink is None:
        raise ApplyError(f"NIC shaping of '{vp.domain}' needs netlink on the VM's host")
    nl = netlink()
    notes = []
    for nic in shaped:
        assert nic.bandwidth is not None
        inbound, outbound = nic.bandwidth.limits()
        with net_lock or nullcontext():
            nl.shape(nic.tap, inbound, outbound)
        notes.append(f"bandwidth of {nic.tap} shaped")
    return notes


def make_realtime(vp: VmPlan, steps: list[rt.RtStep]) -> list[str]:
    """RT budgets down the domain's cgroups, then SCHED_FIFO/RR on its vCPU
    threads (a parent's budget must hold its children's, so budgets first)."""
    budget = vp.realtime
    assert budget is not None
    pid = threads.qemu_pid(vp.domain)
    if pid is None:
        raise ApplyError(f"cannot find the QEMU process of '{vp.domain}' to make it real-time")
    first = len(steps)
    rt.make_realtime(
        threads.inspect(pid),
        budget.policy,
        budget.priority,
        budget.domain_runtime_us,
        budget.vcpu_runtime_us,
        steps,
    )
    notes = [f"cgroup {s.path}: cpu.rt_runtime_us {s.old} -> {s.new}" for s in steps[first:]]
    notes.append(
        f"vCPU threads of {vp.domain}: SCHED_{budget.policy.upper()} priority {budget.priority}"
    )
    return notes


def reschedule(
    vp: VmPlan,
    *,
    rt_by_thread: bool,
    rt_steps: list[rt.RtStep],
    was: dict[int, tuple[str, int]],
) -> list[str]:
    """vCPU scheduling of a running QEMU as planned: real-time set again where
    it was lost (a migration does not carry it, a `chrt` may undo it), or
    taken away; nothing where it is as planned. `was` receives each vCPU
    thread's policy before any change, for `rt.undo` to put back."""
    pid = threads.qemu_pid(vp.domain)
    if pid is None:
        raise ApplyError(f"cannot find the QEMU process of '{vp.domain}'")
    qemu = threads.inspect(pid)
    was.update(rt.policies(qemu))
    want = ("other", 0) if vp.realtime is None else (vp.realtime.policy, vp.realtime.priority)
    if vp.realtime is None or not rt_by_thread:
        if any((t.policy, t.priority) != want for t in qemu.vcpus):
            rt.set_policy(qemu, *want)
        return []
    return make_realtime(vp, rt_steps)
