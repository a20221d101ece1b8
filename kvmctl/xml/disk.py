"""``<disk>`` and its ``<iotune>`` throttle."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, flag, value
from kvmctl.xml.convert import INT


class IOTune(XMLModel, tag="iotune"):
    """QEMU block throttling. ``*_max`` allow bursts up to that rate for
    ``*_max_length`` seconds; total_* and read_*/write_* exclude each other."""

    total_bytes_sec: int | None = value("total_bytes_sec", INT, default=None)
    read_bytes_sec: int | None = value("read_bytes_sec", INT, default=None)
    write_bytes_sec: int | None = value("write_bytes_sec", INT, default=None)
    total_iops_sec: int | None = value("total_iops_sec", INT, default=None)
    read_iops_sec: int | None = value("read_iops_sec", INT, default=None)
    write_iops_sec: int | None = value("write_iops_sec", INT, default=None)
    total_bytes_sec_max: int | None = value("total_bytes_sec_max", INT, default=None)
    read_bytes_sec_max: int | None = value("read_bytes_sec_max", INT, default=None)
    write_bytes_sec_max: int | None = value("write_bytes_sec_max", INT, default=None)
    total_iops_sec_max: int | None = value("total_iops_sec_max", INT, default=None)
    read_iops_sec_max: int | None = value("read_iops_sec_max", INT, default=None)
    write_iops_sec_max: int | None = value("write_iops_sec_max", INT, default=None)
    size_iops_sec: int | None = value("size_iops_sec", INT, default=None)
    group_name: str | None = value("group_name", default=None)
    total_bytes_sec_max_length: int | None = value("total_bytes_sec_max_length", INT, default=None)
    read_bytes_sec_max_length: int | None = value("read_bytes_sec_max_length", INT, default=None)
    write_bytes_sec_max_length: int | None = value("write_bytes_sec_max_length", INT, default=None)
    total_iops_sec_max_length: int | None = value("total_iops_sec_max_length", INT, default=None)
    read_iops_sec_max_length: int | None = value("read_iops_sec_max_length", INT, default=None)
    write_iops_sec_max_length: int | None = value("write_iops_sec_max_length", INT, default=None)

    def _validate(self) -> None:
        # libvirt refuses these combinations at define time; say so earlier.
        for kind in ("bytes_sec", "iops_sec", "bytes_sec_max", "iops_sec_max"):
            total = getattr(self, f"total_{kind}")
            split = getattr(self, f"read_{kind}"), getattr(self, f"write_{kind}")
            if total is not None and any(v is not None for v in split):
                raise ValueError(f"iotune: total_{kind} excludes read_{kind}/write_{kind}")


DiskType = Literal["file", "block", "volume"]
Bus = Literal["virtio", "sata", "scsi", "ide", "usb"]


class Disk(XMLModel, tag="disk"):
    """The source is ``source_file`` (type file), ``source_dev`` (block) or
    ``source_pool`` + ``source_volume`` (volume); a cdrom may have none."""

    type: DiskType = value("@type", default="file")
    device: Literal["disk", "cdrom", "floppy", "lun"] = value("@device", default="disk")
    driver_name: Literal["qemu"] | None = value("driver/@name", default=None)
    driver_type: Literal["raw", "qcow2"] | None = value("driver/@type", default=None)
    driver_cache: (
        Literal["default", "none", "writethrough", "writeback", "directsync", "unsafe"] | None
    ) = value("driver/@cache", default=None)
    driver_io: Literal["threads", "native", "io_uring"] | None = value("driver/@io", default=None)
    driver_discard: Literal["unmap", "ignore"] | None = value("driver/@discard", default=None)
    driver_iothread: int | None = value("driver/@iothread", INT, default=None)
    source_file: str | None = value("source/@file", default=None)
    source_dev: str | None = value("source/@dev", default=None)
    source_pool: str | None = value("source/@pool", default=None)
    source_volume: str | None = value("source/@volume", default=None)
    target_dev: str = value("target/@dev")
    target_bus: Bus | None = value("target/@bus", default=None)
    iotune: IOTune | None = child(IOTune, default=None)
    readonly: bool = flag("readonly")
    serial: str | None = value("serial", default=None)

    def _validate(self) -> None:
        given = {
            "file": self.source_file is not None,
            "block": self.source_dev is not None,
            "volume": self.source_pool is not None or self.source_volume is not None,
        }
        foreign = [kind for kind, present in given.items() if present and kind != self.type]
        if foreign:
            raise ValueError(
                f"disk {self.target_dev}: type {self.type!r} but a {foreign[0]} source"
            )
        if self.type == "volume" and given["volume"]:
            if self.source_pool is None or self.source_volume is None:
                raise ValueError(f"disk {self.target_dev}: a volume source needs pool and volume")
        if self.device != "cdrom" and not given[self.type]:
            raise ValueError(f"disk {self.target_dev}: a {self.type} disk needs a source")
