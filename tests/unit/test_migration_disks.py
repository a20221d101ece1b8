"""Which disks a migration copies, and which it refuses: an overlay on an
image (a cloud image's disk) is refused under --copy-storage, since kvmctl
does not copy images; a plain volume is copied."""

from __future__ import annotations

from typing import Any, cast

import pytest

from kvmctl.adapters.shared_storage import Sharing
from kvmctl.adapters.virt import Virt
from kvmctl.migration.preflight import Request, _disks, backing_images, domain_backing_images

pytestmark = pytest.mark.unit

IMAGE = "/var/lib/kvmctl/images/debian-12/disk.qcow2"


def domain_xml(backing: bool) -> str:
    chain = (
        f"<backingStore type='file'><format type='qcow2'/><source file='{IMAGE}'/>"
        "<backingStore/></backingStore>"
        if backing
        else ""
    )
    return (
        "<domain><devices><disk type='volume' device='disk'>"
        "<source pool='kvmctl' volume='s-ivi-data.qcow2'/>"
        f"{chain}<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )


class Host:
    def volume_exists(self, pool: str, volume: str) -> bool:
        return False

    def volume_capacity(self, pool: str, volume: str) -> int:
        return 2 * 1024**3

    def pool_available(self, pool: str) -> int:
        return 100 * 1024**3


def disks(backing: bool) -> tuple[list[Any], list[str]]:
    host = cast(Virt, Host())
    request = Request(dest_uri="qemu+tcp://10.251.0.2/system", migrate_uri=None, copy_storage=True)
    sharing = {"kvmctl": Sharing("kvmctl", shared=False)}
    xml = domain_xml(backing)
    copies, _shared, problems = _disks(
        "ivi", xml, backing_images(xml), host, host, request, sharing
    )
    return copies, problems


def test_an_overlay_on_an_image_is_refused_naming_the_image() -> None:
    copies, problems = disks(backing=True)
    assert copies == []
    assert problems == [
        f"VM 'ivi': disk vda (kvmctl/s-ivi-data.qcow2) is an overlay on the image {IMAGE}, "
        "which kvmctl does not copy: --copy-storage moves disks without a backing image only; "
        "move it on storage both hosts share, with the image at the same path on both"
    ]


def test_a_plain_volume_is_copied() -> None:
    copies, problems = disks(backing=False)
    assert problems == []
    assert [(c.target, c.volume) for c in copies] == [("vda", "s-ivi-data.qcow2")]


class Source:
    """libvirt's two views of one running domain: the migratable XML has no
    backing chain, the live one has."""

    def xml(self, domain: str, inactive: bool = False, migratable: bool = False) -> str:
        return domain_xml(backing=not migratable)


def test_the_backing_chain_is_read_from_the_live_xml_not_the_migratable_one() -> None:
    source = cast(Virt, Source())
    assert domain_backing_images(source, "s-ivi") == {"vda": IMAGE}
