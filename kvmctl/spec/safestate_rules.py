"""Rules relating the heartbeats and the declared safe state to the VMs: who
is watched, who may be shed, which action each trigger may take."""

from __future__ import annotations

from collections.abc import Iterator

from kvmctl.spec.models import Cockpit
from kvmctl.spec.problems import Path, Problem, host_key, unknown_vm
from kvmctl.spec.safestate import HEARTBEAT_CHANNEL, TRIGGERS


def check_heartbeats(spec: Cockpit) -> Iterator[Problem]:
    beating = {name for name, vm in spec.vms.items() if vm.heartbeat is not None}
    safe = spec.safe_state
    acted_on = set(watched_vms(spec)) if safe and safe.heartbeat_missed is not None else set()
    for name in sorted(beating - acted_on):
        yield (
            ("vms", name, "heartbeat"),
            f"a missed heartbeat of VM '{name}' would change nothing: declare safe_state "
            "with heartbeat_missed, watching this VM (criticality: safety, or safe_state.watch)",
        )
    for i, ch in enumerate(spec.channels):
        if ch.name == HEARTBEAT_CHANNEL and ch.kind == "serial" and ch.vm in beating:
            yield (
                ("channels", i, "name"),
                f"VM '{ch.vm}' has a heartbeat, which kvmctl carries over a serial channel "
                f"named '{HEARTBEAT_CHANNEL}' of its own: name this one differently",
            )


def watched_vms(spec: Cockpit) -> list[str]:
    """The VMs whose failures drive the safe state: safe_state.watch, or the
    safety VMs."""
    safe = spec.safe_state
    if safe is not None and safe.watch is not None:
        return list(safe.watch)
    return sorted(n for n, vm in spec.vms.items() if vm.criticality == "safety")


def check_safe_state(spec: Cockpit) -> Iterator[Problem]:
    safe = spec.safe_state
    if safe is None:
        return
    base: Path = ("safe_state",)
    for i, name in enumerate(safe.watch or []):
        if name not in spec.vms:
            yield (base + ("watch", i), unknown_vm(spec, name))
    watched = [n for n in watched_vms(spec) if n in spec.vms]
    if not watched:
        yield (
            base + ("watch",),
            "no VM to watch: list them under watch, or give a VM criticality: safety",
        )
    hosts = {spec.vms[n].host for n in watched} or {
        spec.vms[n].host for n in safe.shed if n in spec.vms
    }
    for i, name in enumerate(safe.shed):
        where = base + ("shed", i)
        if name not in spec.vms:
            yield (where, unknown_vm(spec, name))
        elif name in watched:
            yield (where, f"VM '{name}' is watched: the safe state never pauses or caps it")
        elif spec.vms[name].criticality == "safety":
            yield (where, f"VM '{name}' is a safety VM: the safe state never pauses or caps it")
        elif spec.vms[name].host not in hosts:
            yield (
                where,
                f"VM '{name}' runs on {host_key(spec.vms[name].host)}, no watched VM does: "
                "the supervisor of a host acts on that host's VMs only",
            )
    if len(safe.shed) != len(set(safe.shed)):
        yield (base + ("shed",), "lists a VM twice")
    used: set[str] = set()
    for trigger in TRIGGERS:
        actions = safe.actions(trigger) or []
        used.update(actions)
        if ("pause" in actions or "cap" in actions) and not safe.shed:
            yield (base + (trigger,), "pause and cap act on the VMs under shed, which lists none")
        if "restart" in actions and trigger != "heartbeat_missed":
            why = (
                "its restart policy (vms.<name>.restart) restarts a crashed VM"
                if trigger == "crashed"
                else "the restart budget is spent: restarting anyway would defeat restart.max"
            )
            yield (base + (trigger,), f"restart is for heartbeat_missed only: {why}")
    if "cap" in used and safe.cap is None:
        yield (base + ("cap",), "the cap action needs cap (a CPU limit, like '20%')")
    if safe.cap is not None and "cap" not in used:
        yield (base + ("cap",), "no trigger lists the cap action")
    for name in safe.shed:
        vm = spec.vms.get(name)
        if "cap" in used and vm is not None and vm.cpu.placement == "dedicated":
            yield (
                base + ("shed", safe.shed.index(name)),
                f"VM '{name}' has dedicated CPUs, which are not capped: pause it instead",
            )
    if safe.heartbeat_missed is not None and not any(
        spec.vms[n].heartbeat is not None for n in watched
    ):
        yield (
            base + ("heartbeat_missed",),
            "no watched VM has a heartbeat (vms.<name>.heartbeat: {period, deadline})",
        )
