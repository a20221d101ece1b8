"""Storage pool and volume XML for libvirt's storage API."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, value
from kvmctl.xml.convert import INT
from kvmctl.xml.names import validate_pool_name, validate_uuid, validate_volume_name

VolumeFormat = Literal["raw", "qcow2"]


class BackingStore(XMLModel, tag="backingStore"):
    """The read-only base image a qcow2 overlay starts from."""

    path: str = value("path")
    format: VolumeFormat = value("format/@type")


class StorageVolume(XMLModel, tag="volume"):
    """Sizes are bytes. ``path`` is filled in by libvirt; leave it out when creating."""

    type: Literal["file", "block", "dir"] | None = value("@type", default=None)
    name: str = value("name")
    capacity_bytes: int = value("capacity", INT, unit="bytes")
    allocation_bytes: int | None = value("allocation", INT, unit="bytes", default=None)
    path: str | None = value("target/path", default=None)
    format: VolumeFormat | None = value("target/format/@type", default=None)
    backing_store: BackingStore | None = child(BackingStore, default=None)

    def _validate(self) -> None:
        validate_volume_name(self.name)
        if self.capacity_bytes < 0:
            raise ValueError(f"volume {self.name}: capacity must not be negative")
        if self.backing_store is not None and self.format != "qcow2":
            raise ValueError(f"volume {self.name}: a backing store needs format 'qcow2'")


class StoragePool(XMLModel, tag="pool"):
    """A directory pool: volumes are files below ``target_path``."""

    type: Literal["dir"] = value("@type", default="dir")
    name: str = value("name")
    uuid: str | None = value("uuid", default=None)
    target_path: str = value("target/path")

    def _validate(self) -> None:
        validate_pool_name(self.name)
        if self.uuid is not None:
            validate_uuid(self.uuid)
        if not self.target_path.startswith("/"):
            raise ValueError(f"pool {self.name}: target path {self.target_path!r} must be absolute")
