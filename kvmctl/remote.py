"""A host kvmctl reaches only through its libvirtd (another SoC of a
multi-host set, a test lab): facts, bridges and status as that libvirtd tells
them, and what kvmctl cannot do there from afar.

kvmctl makes bridges (pyroute2), NIC shaping (tc) and thread-level real-time
budgets (cgroup files) on the machine it runs on. On a remote host those are
the job of kvmctl running there (`kvmctl apply FILE --host NAME`, which the
Ansible `cockpit` role does), so preflight names them instead of half-doing
them.
"""

from __future__ import annotations

from kvmctl.adapters import destination
from kvmctl.adapters.virt import Virt
from kvmctl.host.facts import HostFacts, VirtType
from kvmctl.planner.networks import bridge_alias
from kvmctl.planner.plan import Plan
from kvmctl.spec import Cockpit


def facts(virt: Virt, wanted: VirtType | None) -> HostFacts:
    """HostFacts from the remote libvirtd. Without a booted probe there, KVM is
    taken as usable when that libvirt offers KVM domains; a spec's
    `hosts.NAME.virt_type` says otherwise for hosts where it is not."""
    if wanted is None:
        wanted = "kvm" if "kvm" in destination.identity(virt.conn).machines else "qemu"
    return destination.facts(virt.conn, wanted)


def bridges(virt: Virt, spec: Cockpit) -> dict[str, str | None]:
    """The spec's bridges present on the remote host, as if kvmctl owned them:
    libvirt lists interfaces but not their alias, and kvmctl neither adopts
    nor deletes bridges it cannot see the owner of; it only needs them there."""
    present = destination.interfaces(virt.conn)
    return {
        net.bridge: bridge_alias(spec.name, name)
        for name, net in spec.networks.items()
        if net.bridge in present
    }


def problems(plan: Plan, host: str | None, uri: str) -> list[str]:
    """What the plan needs done on the remote host itself."""
    where = host or uri
    there = (
        f"run `kvmctl apply SPEC --host {host}` on {host} (the Ansible cockpit role does)"
        if host
        else f"run `kvmctl apply SPEC` on {uri}'s machine"
    )
    out = [
        f"bridge '{b.bridge}' of network '{b.network}' is missing on {where}: kvmctl makes "
        f"bridges only on the machine it runs on; {there}"
        for b in plan.bridge_actions
        if b.kind == "create"
    ]
    for name, vm_plan in sorted(plan.vms.items()):
        if any(nic.bandwidth is not None for nic in vm_plan.nics):
            out.append(
                f"VM '{name}' has NIC bandwidth limits, shaped with tc on the host itself; {there}"
            )
    return out
