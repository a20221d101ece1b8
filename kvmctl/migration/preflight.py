"""Before any byte moves: can the destination take these VMs, and with what XML?

Every check reads the destination through its own libvirt connection; every
failure is one sentence, and the whole request is refused (exit 3) before
either side is changed.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmctl.adapters import destination, shared_storage
from kvmctl.adapters import migration as job_api
from kvmctl.adapters.migration import Transfer
from kvmctl.adapters.virt import Virt
from kvmctl.errors import HostError, UsageError
from kvmctl.host.facts import VirtType
from kvmctl.host.livestate import read_live
from kvmctl.planner.domain import build_domain
from kvmctl.planner.migration import Overrides, Policy, plan_destination, resolve_policy
from kvmctl.planner.plan import PlanOptions, VmPlan, domain_name
from kvmctl.spec.models import Cockpit
from kvmctl.xml.base import parse_xml
from kvmctl.xml.migratable import retarget


@dataclass(frozen=True)
class DiskCopy:
    target: str  # vda
    pool: str
    volume: str
    capacity: int


@dataclass(frozen=True)
class Prepared:
    """One VM, checked and ready to move."""

    vm: str
    domain: str
    plan: VmPlan  # its plan on the destination
    policy: Policy
    transfer: Transfer
    dest_xml: str
    persist_xml: str
    copies: tuple[DiskCopy, ...]
    shared_pools: tuple[str, ...] = ()  # pools both hosts see: their disks stay put


@dataclass(frozen=True)
class Request:
    dest_uri: str
    migrate_uri: str | None
    copy_storage: bool = False
    keep_source: bool = False
    tls: bool = False
    overrides: Overrides = Overrides()


def prepare(
    spec: Cockpit,
    names: list[str],
    source: Virt,
    dest: Virt,
    request: Request,
    options: PlanOptions,
) -> tuple[dict[str, Prepared], list[str]]:
    """Check the destination for every VM in `names`; return what each needs
    to move and notes for the user. Raises HostError listing every problem."""
    problems: list[str] = []
    policies: dict[str, Policy] = {}
    for name in names:
        policy, bad = resolve_policy(spec.vms[name], request.overrides)
        problems += [f"VM '{name}': {p}" for p in bad]
        policies[name] = policy
    if problems:
        raise UsageError("cannot migrate as asked: " + "; ".join(problems))

    domains = {name: _running(source, spec.name, name) for name in names}
    src_id = destination.identity(source.conn)
    dst_id = destination.identity(dest.conn)
    if src_id.host_uuid and src_id.host_uuid == dst_id.host_uuid:
        raise UsageError(f"{request.dest_uri} is this same host (host UUID {dst_id.host_uuid})")
    if dst_id.hypervisor_version < src_id.hypervisor_version:
        problems.append(
            f"the destination's QEMU ({dst_id.hypervisor_version}) is older than the source's "
            f"({src_id.hypervisor_version}): a guest cannot move to an older QEMU"
        )

    first = parse_xml(source.xml(domains[names[0]], migratable=True))
    virt_type: VirtType = "kvm" if first.get("type") == "kvm" else "qemu"
    facts = destination.facts(dest.conn, virt_type)
    live = read_live(dest)
    planned = plan_destination(spec, names, facts, live, options)
    problems += planned.problems
    bridges = destination.interfaces(dest.conn)
    sharing: dict[str, shared_storage.Sharing] = {}
    out: dict[str, Prepared] = {}
    for name in names:
        vm_plan = planned.vms.get(name)
        live_xml = source.xml(domains[name], migratable=True)
        machine = parse_xml(live_xml).find("os/type").get("machine", "")
        if machine and machine not in dst_id.machines.get(virt_type, frozenset()):
            problems.append(
                f"VM '{name}': the destination's QEMU has no machine type '{machine}' for "
                f"{virt_type} guests"
            )
        problems += [
            f"VM '{name}' uses bridge '{nic.bridge}', which does not exist on the destination"
            for nic in (vm_plan.nics if vm_plan else ())
            if nic.bridge not in bridges
        ]
        images = domain_backing_images(source, domains[name])
        copies, shared, disk_problems = _disks(
            name, live_xml, images, source, dest, request, sharing
        )
        problems += disk_problems
        if vm_plan is None:
            continue
        planned_dom = build_domain(vm_plan, rt_by_thread=True)
        inactive = source.xml(domains[name], inactive=True, migratable=True)
        transfer = Transfer(
            dest_uri=request.dest_uri,
            migrate_uri=request.migrate_uri,
            copy_disks=tuple(c.target for c in copies),
            keep_source=request.keep_source,
            tls=request.tls,
            shared_proven=bool(shared),
        )
        out[name] = Prepared(
            vm=name,
            domain=domains[name],
            plan=vm_plan,
            policy=policies[name],
            transfer=transfer,
            dest_xml=retarget(live_xml, planned_dom),
            persist_xml=retarget(inactive, planned_dom),
            copies=tuple(copies),
            shared_pools=tuple(sorted(shared)),
        )
    if problems:
        raise HostError(
            f"{request.dest_uri} cannot take {', '.join(names)}; "
            "nothing was changed on either host",
            problems,
        )
    return out, planned.notes


def _running(source: Virt, set_name: str, name: str) -> str:
    domain = domain_name(set_name, name)
    state = job_api.state(source, domain)
    if state is None:
        raise UsageError(f"VM '{name}' (domain {domain}) is not defined on the source host")
    if state != "running":
        raise UsageError(f"VM '{name}' is {state}: only a running VM is live-migrated")
    return domain


def _disks(
    name: str,
    xml: str,
    images: dict[str, str],
    source: Virt,
    dest: Virt,
    request: Request,
    sharing: dict[str, shared_storage.Sharing],
) -> tuple[list[DiskCopy], set[str], list[str]]:
    """Writable disks: on storage both hosts share (they stay where they
    are), copied over NBD (--copy-storage) into a volume the destination's
    pool has room for, or already there. `sharing` caches the probe per pool."""
    copies: list[DiskCopy] = []
    shared: set[str] = set()
    problems: list[str] = []
    for disk in parse_xml(xml).findall("devices/disk"):
        src = disk.find("source")
        target = disk.find("target").get("dev")
        readonly = disk.find("readonly") is not None or disk.get("device") == "cdrom"
        pool = src.get("pool") if src is not None else None
        volume = src.get("volume") if src is not None else None
        if pool is None or volume is None:
            where = src.get("file") if src is not None else "no source"
            problems.append(
                f"VM '{name}': disk {target} ({where}) is not a volume of a storage pool, so "
                "kvmctl cannot check or copy it"
            )
            continue
        if pool not in sharing:
            sharing[pool] = shared_storage.probe(source, dest, pool)
        if sharing[pool].problem:
            problems.append(f"VM '{name}': {sharing[pool].problem}")
            continue
        if sharing[pool].shared:
            shared.add(pool)
            if request.keep_source and not readonly:
                # The domain kept here would name the file the guest now runs
                # on there: destroying or starting it would wreck that guest.
                problems.append(
                    f"VM '{name}': disk {target} ({pool}/{volume}) is on storage the "
                    "destination shares: --keep-source would leave a second domain on it"
                )
            if request.copy_storage and not readonly:
                # Copying a disk onto itself, then deleting "the source copy",
                # would destroy the very file the guest runs on.
                problems.append(
                    f"VM '{name}': disk {target} ({pool}/{volume}) is on storage the "
                    "destination shares: migrate without --copy-storage"
                )
            continue
        present = dest.volume_exists(pool, volume)
        if readonly:
            if not present:
                problems.append(
                    f"VM '{name}': read-only disk {target} ({pool}/{volume}) is not on the "
                    "destination"
                )
            continue
        if not request.copy_storage:
            # A same-named volume on storage that is not shared is another
            # file: the guest would go on with a stale disk.
            problems.append(
                f"VM '{name}': disk {target} ({pool}/{volume}) is not on storage the "
                "destination shares; pass --copy-storage to copy it"
                + (" (the volume of that name there is another file: remove it)" if present else "")
            )
            continue
        image = images.get(target)
        if image is not None:
            # libvirt would copy the whole chain flattened into one volume: the
            # image's full size on the wire and in the destination's pool, and
            # a disk that no longer sits on the image `apply` plans there.
            problems.append(
                f"VM '{name}': disk {target} ({pool}/{volume}) is an overlay on the image "
                f"{image}, which kvmctl does not copy: --copy-storage moves disks without "
                "a backing image only; move it on storage both hosts share, with the image "
                "at the same path on both"
            )
            continue
        if present:
            problems.append(
                f"VM '{name}': volume {pool}/{volume} already exists on the destination "
                "(left from an earlier run?): remove it, or migrate without --copy-storage"
            )
            continue
        capacity = source.volume_capacity(pool, volume) or 0
        free = dest.pool_available(pool)
        if free is not None and free < capacity:
            problems.append(
                f"VM '{name}': pool '{pool}' on the destination has {free // 1024**2} MiB free, "
                f"disk {target} needs {capacity // 1024**2} MiB"
            )
        copies.append(DiskCopy(target, pool, volume, capacity))
    return copies, shared, problems


def domain_backing_images(source: Virt, domain: str) -> dict[str, str]:
    """`backing_images` of a running domain, read from its live XML: the
    migratable XML the rest of preflight reads leaves backing chains out."""
    return backing_images(source.xml(domain))


def backing_images(xml: str) -> dict[str, str]:
    """Target -> the file its top image sits on, for the disks the live
    (not migratable) XML shows on a backing file."""
    out: dict[str, str] = {}
    for disk in parse_xml(xml).findall("devices/disk"):
        source = disk.find("backingStore/source")
        if source is not None and source.get("file"):
            out[disk.find("target").get("dev")] = source.get("file")
    return out
