"""Name and identifier rules for what kvmctl creates."""

from __future__ import annotations

import pytest

from kvmctl.xml import Devices, Shmem, StoragePool, StorageVolume, Vsock
from kvmctl.xml.names import (
    validate_cpuset,
    validate_domain_name,
    validate_ifname,
    validate_mac,
    validate_shmem_name,
    validate_uuid,
    validate_volume_name,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["cluster", "demo-cockpit.hud_2", "a+b", "9", "a" * 64])
def test_good_domain_names(name: str) -> None:
    assert validate_domain_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "-x", "a b", "a/b", "ü", "a" * 65, "a\n"])
def test_bad_domain_names_say_why(name: str) -> None:
    with pytest.raises(ValueError, match="domain name"):
        validate_domain_name(name)


def test_volume_names_allow_file_names_but_no_paths() -> None:
    assert validate_volume_name("cluster-overlay.qcow2")
    for bad in ("..", "../x", "a/b", "." * 3, "a" * 256):
        with pytest.raises(ValueError, match="volume name"):
            validate_volume_name(bad)


def test_shmem_names_are_file_names_in_dev_shm() -> None:
    assert validate_shmem_name("kvmctl.demo-cockpit.vehicle-state")
    for bad in ("..", "a/b", "../../etc/x", "a" * 256, ""):
        with pytest.raises(ValueError, match="shmem name"):
            Shmem(name=bad, size_mib=1)


def test_a_shmem_is_listed_once_and_a_cid_is_never_reserved() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        Devices(shmems=(Shmem(name="a", size_mib=1), Shmem(name="a", size_mib=2)))
    for cid in (0, 1, 2, 0xFFFFFFFF):
        with pytest.raises(ValueError, match="reserved"):
            Vsock(cid_address=cid)


def test_ifnames_follow_the_kernel_limit() -> None:
    assert validate_ifname("kvbr-vehicle") == "kvbr-vehicle"
    assert validate_ifname("a" * 15)
    for bad in ("a" * 16, "", "br 0", "br/0", "br:0"):
        with pytest.raises(ValueError, match="interface name"):
            validate_ifname(bad)


def test_uuid_must_be_canonical() -> None:
    good = "6f1c2a8e-64c5-4f3a-9b8e-3d5a2f0f7c11"
    assert validate_uuid(good) == good
    with pytest.raises(ValueError, match="must be written as"):
        validate_uuid(good.upper())
    with pytest.raises(ValueError, match="not a UUID"):
        validate_uuid("nope")


def test_mac_and_cpuset() -> None:
    assert validate_mac("52:54:00:ab:cd:ef")
    for bad in ("52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "52:54:00:ab:cd"):
        with pytest.raises(ValueError, match="MAC"):
            validate_mac(bad)
    assert validate_cpuset("0-3,^2,6") == "0-3,^2,6"
    with pytest.raises(ValueError, match="cpuset"):
        validate_cpuset("0-")


def test_storage_models_apply_the_rules() -> None:
    with pytest.raises(ValueError, match="volume name"):
        StorageVolume(name="../x", capacity_bytes=1)
    with pytest.raises(ValueError, match="must be absolute"):
        StoragePool(name="p", target_path="relative/dir")
    with pytest.raises(ValueError, match="backing store needs format"):
        from kvmctl.xml import BackingStore

        StorageVolume(
            name="v",
            capacity_bytes=1,
            format="raw",
            backing_store=BackingStore(path="/b", format="raw"),
        )
