"""Small devices and the ``<devices>`` container that holds every device."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, children, value
from kvmctl.xml.chardev import Channel, Console, Serial
from kvmctl.xml.convert import INT, ONOFF, YESNO
from kvmctl.xml.disk import Disk
from kvmctl.xml.display import Graphics, Input, Video
from kvmctl.xml.interface import Interface
from kvmctl.xml.names import validate_shmem_name


class Controller(XMLModel, tag="controller"):
    """E.g. ``usb``/``none`` to drop the default USB controller, or ``pci``/``pcie-root``."""

    type: Literal["pci", "usb", "virtio-serial", "scsi", "sata", "ide"] = value("@type")
    index: int | None = value("@index", INT, default=None)
    model: str | None = value("@model", default=None)


class Watchdog(XMLModel, tag="watchdog"):
    """``itco`` (the q35 chipset's own watchdog) needs libvirt 9.1 or later."""

    model: Literal["i6300esb", "itco", "ib700", "diag288"] = value("@model")
    action: (
        Literal["reset", "shutdown", "poweroff", "pause", "none", "dump", "inject-nmi"] | None
    ) = value("@action", default=None)


class MemBalloon(XMLModel, tag="memballoon"):
    """``model='none'`` removes the balloon, which hugepage-backed guests
    should do: ballooning cannot return hugepages to the host."""

    model: Literal["virtio", "virtio-transitional", "virtio-non-transitional", "none"] = value(
        "@model", default="virtio"
    )
    autodeflate: bool | None = value("@autodeflate", ONOFF, default=None)
    stats_period: int | None = value("stats/@period", INT, default=None)

    def _validate(self) -> None:
        if self.model == "none" and (self.stats_period is not None or self.autodeflate is not None):
            raise ValueError("memballoon: model 'none' takes no options")


class RNG(XMLModel, tag="rng"):
    """With the random backend and no ``backend_path`` libvirt fills in its default device."""

    model: Literal["virtio", "virtio-transitional", "virtio-non-transitional"] = value(
        "@model", default="virtio"
    )
    rate_bytes: int | None = value("rate/@bytes", INT, default=None)
    rate_period: int | None = value("rate/@period", INT, default=None)
    backend_model: Literal["random", "builtin"] = value("backend/@model", default="random")
    backend_path: str | None = value("backend", default=None)

    def _validate(self) -> None:
        if self.backend_model == "builtin" and self.backend_path is not None:
            raise ValueError("rng: the builtin backend takes no path")


class Panic(XMLModel, tag="panic"):
    """``isa`` is QEMU's pvpanic ISA device; ``pvpanic`` (the PCI variant)
    needs libvirt 9.1 or later."""

    model: Literal["isa", "pvpanic", "hyperv", "pseries", "s390"] | None = value(
        "@model", default=None
    )


class Shmem(XMLModel, tag="shmem"):
    """Memory shared between domains (QEMU's ivshmem). For ``ivshmem-plain``
    libvirt backs it with the file ``/dev/shm/<name>``, so the name is one
    host-wide namespace. Without ``role='master'`` QEMU blocks migration and
    memory snapshots of the domain."""

    name: str = value("@name")
    role: Literal["master", "peer"] | None = value("@role", default=None)
    model: Literal["ivshmem-plain", "ivshmem-doorbell"] = value(
        "model/@type", default="ivshmem-plain"
    )
    size_mib: int | None = value("size", INT, unit="M", default=None)

    def _validate(self) -> None:
        validate_shmem_name(self.name)


class Vsock(XMLModel, tag="vsock"):
    """An AF_VSOCK device (vhost-vsock: the host needs /dev/vhost-vsock)."""

    model: Literal["virtio", "virtio-transitional", "virtio-non-transitional"] | None = value(
        "@model", default="virtio"
    )
    cid_auto: bool | None = value("cid/@auto", YESNO, default=None)
    cid_address: int | None = value("cid/@address", INT, default=None)

    def _validate(self) -> None:
        if self.cid_address is not None and not 3 <= self.cid_address <= 0xFFFFFFFE:
            raise ValueError(f"vsock: CID {self.cid_address} is reserved or out of range")


class Devices(XMLModel, tag="devices"):
    """Fields follow libvirt's own device order, so a definition read back
    from libvirt lists its devices in the order written here. Devices
    libvirt adds on its own and this model does not know are dropped on read."""

    emulator: str | None = value("emulator", default=None)
    disks: tuple[Disk, ...] = children(Disk, default=())
    controllers: tuple[Controller, ...] = children(Controller, default=())
    interfaces: tuple[Interface, ...] = children(Interface, default=())
    serials: tuple[Serial, ...] = children(Serial, default=())
    consoles: tuple[Console, ...] = children(Console, default=())
    channels: tuple[Channel, ...] = children(Channel, default=())
    inputs: tuple[Input, ...] = children(Input, default=())
    graphics: tuple[Graphics, ...] = children(Graphics, default=())
    videos: tuple[Video, ...] = children(Video, default=())
    watchdog: Watchdog | None = child(Watchdog, default=None)
    memballoon: MemBalloon | None = child(MemBalloon, default=None)
    rngs: tuple[RNG, ...] = children(RNG, default=())
    panics: tuple[Panic, ...] = children(Panic, default=())
    shmems: tuple[Shmem, ...] = children(Shmem, default=())
    vsock: Vsock | None = child(Vsock, default=None)

    def _validate(self) -> None:
        targets = [d.target_dev for d in self.disks]
        duplicate = next((t for t in targets if targets.count(t) > 1), None)
        if duplicate is not None:
            raise ValueError(f"devices: disk target {duplicate!r} is used twice")
        names = [s.name for s in self.shmems]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise ValueError(f"devices: shmem {twice!r} is listed twice")
        no_usb = any(c.type == "usb" and c.model == "none" for c in self.controllers)
        if no_usb and any(i.bus == "usb" for i in self.inputs):
            raise ValueError("devices: a USB input device needs a USB controller, not model 'none'")
