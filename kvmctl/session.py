"""A session: one spec read against one host. The spec is loaded, the host's
facts and the domains that run there are read, and the VMs placed on that
host are planned. Every operation (apply, snapshot, migration, supervise,
status, the exporter) starts from one.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.virt import Virt
from kvmctl.errors import HostError
from kvmctl.host import images, remote
from kvmctl.host.facts import HostFacts, VirtType
from kvmctl.host.livestate import read_live
from kvmctl.host.probe import probe_host
from kvmctl.planner.hosts import check_host, is_remote
from kvmctl.planner.live import LiveState
from kvmctl.planner.plan import Plan, PlanOptions, make_plan
from kvmctl.spec import Cockpit, load_spec
from kvmctl.state import history, paths


@dataclass
class Session:
    spec: Cockpit
    uri: str
    facts: HostFacts
    plan: Plan
    virt: Virt | None  # None when planning offline from a facts file
    options: PlanOptions
    host: str | None = None  # the spec's host: these VMs are planned for
    remote: bool = False  # reached through libvirt only (see planner.hosts.is_remote)

    def close(self) -> None:
        if self.virt is not None:
            self.virt.close()


def plan_options(spec: Cockpit) -> PlanOptions:
    """Plan options from the built images' manifests, where they are built
    (preflight reports the missing ones), and the set's recorded boot times."""
    options = PlanOptions(
        image_root=str(paths.image_dir()),
        pool_path=str(paths.volume_dir()),
        log_dir=str(paths.log_dir()),
        channel_dir=str(paths.channel_dir()),
        best_cold_ready=history.best_cold(history.read(spec.name)),
    )
    kernels = dict(options.boot_kernels)
    flavours = sorted({vm.image.builtin for vm in spec.vms.values() if vm.image.builtin})
    disks = dict(options.disk_images)
    for flavour in flavours:
        if flavour in images.DISK_FLAVOURS:
            with suppress(HostError):
                disks[flavour] = str(images.disk_image(flavour).path)
            continue
        with suppress(HostError):
            img = images.artifacts(flavour)
            kernels[flavour] = img.kernel.name
            # All flavours share one base today.
            options = replace(options, cmdline_base=img.cmdline_base)
    return replace(options, boot_kernels=kernels, disk_images=disks)


def open_session(
    spec: Cockpit | str | Path,
    uri: str,
    *,
    facts_file: Path | None = None,
    host: str | None = None,
) -> Session:
    """Load the spec, read the host and what runs, and plan the VMs placed on
    `host` (None: those without host:). With `facts_file` nothing on this host
    is touched: the plan is for the host those facts describe. A remote `uri`
    is read through its libvirt alone (kvmctl.host.remote)."""
    if not isinstance(spec, Cockpit):
        spec = load_spec(spec)
    if host is not None:
        check_host(spec, host)
    options = plan_options(spec)
    wanted = spec.hosts[host].virt_type if host is not None else None
    if facts_file is not None:
        facts = _virt_type(HostFacts.load(facts_file), wanted)
        plan = make_plan(spec, facts, LiveState(), options, host=host)
        return Session(spec, uri, facts, plan, None, options, host)
    virt = Virt(open_connection(uri))
    try:
        if is_remote(uri):
            facts = remote.facts(virt, wanted)
            live = read_live(virt, lambda: remote.bridges(virt, spec, host))
        else:
            facts = _virt_type(probe_host(uri), wanted)
            with Netlink() as nl:
                live = read_live(virt, nl.bridges, observe_set=spec.name)
    except BaseException:
        virt.close()
        raise
    plan = make_plan(spec, facts, live, options, host=host)
    remote_host = is_remote(uri)
    if remote_host:
        # What only kvmctl on that host could do is a problem of this plan, so
        # `kvmctl plan` shows what `apply` would refuse (exit 3).
        warnings = [f"KVM on {uri}: {facts.kvm_reason}"] if facts.kvm_reason else []
        plan = replace(
            plan,
            problems=plan.problems + remote.problems(plan, host, uri),
            warnings=plan.warnings + warnings,
        )
    return Session(spec, uri, facts, plan, virt, options, host, remote_host)


def _virt_type(facts: HostFacts, wanted: VirtType | None) -> HostFacts:
    return facts if wanted is None else facts.model_copy(update={"virt_type": wanted})


def replan(session: Session) -> Session:
    """The session planned again against the domains that run now, on its own
    connection, with the host facts read when it opened: what a long-running
    reader (the exporter) does instead of opening a session per look. Bridges
    are not re-read and running domains are not observed (drift is the
    audit's to report), so its actions are not to be applied."""
    assert session.virt is not None
    live = read_live(session.virt)
    plan = make_plan(session.spec, session.facts, live, session.options, host=session.host)
    return replace(session, plan=plan)
