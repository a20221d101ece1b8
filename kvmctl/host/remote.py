"""A host kvmctl reaches only through its libvirtd (another SoC of a
multi-host set, a test lab): facts, bridges and status as that libvirtd tells
them, and what kvmctl cannot do there from afar.

kvmctl makes bridges (pyroute2), NIC shaping (tc) and thread-level real-time
budgets (cgroup files) on the machine it runs on. On a remote host those are
the job of kvmctl running there (`kvmctl apply FILE --host NAME`, which the
Ansible `cockpit` role does): preflight names missing bridges and NIC shaping
instead of half-doing them, and real-time falls back to libvirt's vcpusched.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import suppress
from pathlib import Path

from kvmctl.adapters import destination
from kvmctl.adapters.virt import Virt
from kvmctl.host import kvmprobe, probeguest
from kvmctl.host.facts import HostFacts, VirtType
from kvmctl.planner.networks import bridge_alias
from kvmctl.planner.plan import Plan
from kvmctl.spec import Cockpit
from kvmctl.state.paths import run_dir
from kvmctl.state.statefile import write_atomic


def facts(virt: Virt, wanted: VirtType | None) -> HostFacts:
    """HostFacts from the remote libvirtd. KVM is used there when a probe guest
    booted under it reaches user space (kvmctl.host.kvmprobe's test, through
    libvirt), unless the spec's `hosts.NAME.virt_type` says which."""
    if wanted is not None:
        return destination.facts(virt.conn, wanted)
    virt_type, reason = kvm_verdict(virt)
    found = destination.facts(virt.conn, virt_type)
    return found.model_copy(update={"kvm_reason": reason})


PROBE_TTL_S = 600.0  # a remote host's verdict is reused this long (it has no boot id to key on)


def kvm_verdict(virt: Virt) -> tuple[VirtType, str]:
    ident = destination.identity(virt.conn)
    if "kvm" not in ident.machines:
        return "qemu", "libvirt there offers no KVM"
    cache = run_dir() / "remote-kvm.json"
    cached = _cached(cache, ident.host_uuid) if ident.host_uuid else None
    if cached is not None:
        return cached
    image, problem = probeguest.locate_image()
    if image is None:
        return "qemu", f"KVM is offered there but no probe guest could be booted: {problem}"
    name = f"kvmctl-probe-kvm-{os.getpid()}-{secrets.token_hex(3)}"
    xml = probeguest.probe_domain_xml(name, "kvm", image, None)
    seconds, why = virt.boots(xml, name, probeguest.PROBE_MARKER, kvmprobe.DEFAULT_TIMEOUT)
    if why.startswith("libvirt could not start it"):
        # Not a verdict on KVM (the probe image may be missing there): not kept.
        return "qemu", f"could not boot a probe guest there ({why}); set hosts.NAME.virt_type"
    if seconds is not None:
        verdict: tuple[VirtType, str] = (
            "kvm",
            f"a probe guest reached user space under KVM there in {seconds:.1f} s",
        )
    else:
        verdict = ("qemu", f"a probe guest failed under KVM there ({why}): TCG is used")
    if ident.host_uuid:
        _store(cache, ident.host_uuid, verdict)
    return verdict


def _cached(path: Path, host_uuid: str) -> tuple[VirtType, str] | None:
    try:
        entry = json.loads(path.read_text())[host_uuid]
        age = time.time() - float(entry["at"])
        virt_type, reason = entry["virt_type"], str(entry["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if age > PROBE_TTL_S or virt_type not in ("kvm", "qemu"):
        return None
    return virt_type, f"{reason} (probed {age:.0f} s ago)"


def _store(path: Path, host_uuid: str, verdict: tuple[VirtType, str]) -> None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    doc[host_uuid] = {"virt_type": verdict[0], "reason": verdict[1], "at": time.time()}
    with suppress(OSError):  # no cache then: the next look probes again
        write_atomic(path, json.dumps(doc, indent=1) + "\n")


def bridges(virt: Virt, spec: Cockpit, host: str | None) -> dict[str, str | None]:
    """The bridges of the networks `host`'s VMs use that are present on the
    remote host, as if kvmctl owned them: libvirt lists interfaces but not
    their alias, and kvmctl neither adopts nor deletes bridges it cannot see
    the owner of there (so no other network's bridge is listed: it would be
    planned for deletion); it only needs them there."""
    present = destination.interfaces(virt.conn)
    used = {a.name for vm in spec.vms.values() if vm.host == host for a in vm.networks}
    return {
        net.bridge: bridge_alias(spec.name, name)
        for name, net in spec.networks.items()
        if name in used and net.bridge in present
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
        if vm_plan.channels.regions or vm_plan.channels.serials:
            out.append(
                f"VM '{name}' has shared-memory or serial channels, whose region files and "
                f"sockets kvmctl prepares on the host itself; {there}"
            )
    return out
