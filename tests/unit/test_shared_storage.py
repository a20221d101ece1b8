"""kvmctl.adapters.shared_storage on libvirt's in-process test driver: two
connections to test:///default share one in-memory host (a shared pool);
a test:///FILE connection is a host of its own (storage not shared)."""

from __future__ import annotations

from pathlib import Path

import libvirt
import pytest

from kvmctl.adapters import migration as job_api
from kvmctl.adapters import shared_storage
from kvmctl.adapters.virt import Virt
from kvmctl.planner.migration import Policy

pytestmark = pytest.mark.unit

POOL = "default-pool"


def other_host(tmp_path: Path, pools: str) -> Virt:
    node = tmp_path / "node.xml"
    node.write_text(f"<node>{pools}</node>")
    return Virt(libvirt.open(f"test://{node}"))


def markers(virt: Virt) -> list[str]:
    names = []
    for pool in virt.conn.listAllStoragePools(0):
        names += [v.name() for v in pool.listAllVolumes(0)]
    return [n for n in names if n.startswith(shared_storage.MARKER_PREFIX)]


def test_a_pool_both_hosts_see_is_shared_and_the_marker_is_gone() -> None:
    here = Virt(libvirt.open("test:///default"))
    there = Virt(libvirt.open("test:///default"))
    assert shared_storage.probe(here, there, POOL) == shared_storage.Sharing(POOL, True)
    assert markers(here) == []


def test_a_same_named_pool_elsewhere_is_not_shared(tmp_path: Path) -> None:
    here = Virt(libvirt.open("test:///default"))
    there = other_host(
        tmp_path,
        f"<pool type='dir'><name>{POOL}</name><target><path>/default-pool</path></target></pool>",
    )
    assert shared_storage.probe(here, there, POOL) == shared_storage.Sharing(POOL, False)
    assert markers(here) == [] and markers(there) == []


def test_without_the_pool_there_a_transient_pool_looks_and_goes(tmp_path: Path) -> None:
    here = Virt(libvirt.open("test:///default"))
    there = other_host(tmp_path, "")
    assert shared_storage.probe(here, there, POOL) == shared_storage.Sharing(POOL, False)
    assert there.conn.listAllStoragePools(0) == []


def test_a_pool_missing_here_is_a_problem_not_a_guess() -> None:
    here = Virt(libvirt.open("test:///default"))
    sharing = shared_storage.probe(here, here, "nosuchpool")
    assert sharing.shared is False and sharing.problem is not None
    assert "cannot tell whether pool 'nosuchpool' is shared" in sharing.problem


def _policy() -> Policy:
    return Policy(300, None, True, False, None, None, None, "abort")


@pytest.mark.parametrize(
    ("copy", "shared", "unsafe", "non_shared"),
    [((), True, True, False), (("vda",), False, False, True), (("vda",), True, True, True)],
)
def test_libvirts_fs_type_guess_is_overridden_only_for_proven_sharing(
    copy: tuple[str, ...], shared: bool, unsafe: bool, non_shared: bool
) -> None:
    transfer = job_api.Transfer("qemu+ssh://b/system", None, copy, False, False, shared)
    value = job_api.flags(_policy(), transfer)
    assert bool(value & libvirt.VIR_MIGRATE_UNSAFE) is unsafe
    assert bool(value & libvirt.VIR_MIGRATE_NON_SHARED_DISK) is non_shared
