"""The storage an apply creates, each step journaled: the set's storage
pool, a VM's cloud-init seed and its data volume."""

from __future__ import annotations

from kvmctl.adapters.virt import Virt
from kvmctl.cockpit.journal import Journal
from kvmctl.cockpit.outcome import Progress
from kvmctl.cockpit.seed import seed_iso
from kvmctl.planner.cloudinit import SeedPlan
from kvmctl.planner.domain import build_volume
from kvmctl.planner.plan import Plan, VmPlan
from kvmctl.xml.storage import StoragePool, StorageVolume


def ensure_pool(virt: Virt, journal: Journal, plan: Plan, pool_path: str) -> None:
    any_plan = next(iter(plan.vms.values()))
    name = any_plan.volume.pool
    xml = StoragePool(name=name, target_path=pool_path).to_xml()
    if virt.ensure_pool(xml, name):
        journal.record(f"create storage pool {name}", lambda: virt.remove_pool(name))


def create_storage(virt: Virt, journal: Journal, progress: Progress, plan: VmPlan) -> None:
    if plan.seed is not None:
        _seed(virt, journal, plan.seed)
    vol = plan.volume
    if virt.volume_exists(vol.pool, vol.name):
        return  # kept from before (or from an interrupted run): /data survives
    progress(plan.name, "creating data volume")
    virt.create_volume(vol.pool, build_volume(plan).to_xml())
    journal.record(f"create volume {vol.name}", lambda: virt.delete_volume(vol.pool, vol.name))


def _seed(virt: Virt, journal: Journal, seed: SeedPlan) -> None:
    """The cloud-init seed is derived from the spec: always written afresh."""
    data = seed_iso(seed)
    virt.delete_volume(seed.pool, seed.volume)
    xml = StorageVolume(name=seed.volume, capacity_bytes=len(data), format="raw").to_xml()
    virt.upload_volume(seed.pool, xml, data)
    journal.record(
        f"create volume {seed.volume}", lambda: virt.delete_volume(seed.pool, seed.volume)
    )
