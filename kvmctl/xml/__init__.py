"""Pure libvirt XML object model.

Frozen, keyword-only dataclasses, one per element family, each with
``to_element()`` / ``from_element()`` and ``to_xml()`` / ``from_xml()``.
Nothing here talks to libvirt; the adapters feed the XML to it and parse
what it returns. Sizes are KiB (``*_kib``) except storage (``*_bytes``)::

    domain = Domain(
        type="qemu",
        name="demo-cluster",
        memory_kib=262144,
        vcpus=1,
        memory_backing=MemoryBacking(hugepages=(HugePage(size_kib=2048),)),
        cputune=CPUTune(
            vcpupins=(VCPUPin(vcpu=0, cpuset="1"),),
            emulatorpin="0",
            vcpuscheds=(VCPUSched(vcpus="0", scheduler="fifo", priority=10),),
        ),
        os=OS(machine="pc", kernel="/images/vmlinuz", cmdline="console=ttyS0"),
        devices=Devices(disks=(Disk(source_file="/pool/a.qcow2", target_dev="vda"),)),
    )
    assert Domain.from_xml(domain.to_xml()) == domain

Bad values fail at construction with ValueError (or TypeError for a wrong
Python type). ``Domain.from_xml`` is as strict, so decide ownership of a
domain with ``read_kvmctl_metadata`` before parsing all of it.
"""

from kvmctl.xml.base import XMLModel
from kvmctl.xml.chardev import GUEST_AGENT_CHANNEL, Channel, Console, Serial
from kvmctl.xml.cputune import (
    CPUTune,
    EmulatorSched,
    IOThreadPin,
    IOThreadSched,
    VCPUPin,
    VCPUSched,
)
from kvmctl.xml.devices import (
    RNG,
    Controller,
    Devices,
    MemBalloon,
    Panic,
    Shmem,
    Vsock,
    Watchdog,
)
from kvmctl.xml.disk import Disk, IOTune
from kvmctl.xml.display import Graphics, Input, Video
from kvmctl.xml.domain import Domain
from kvmctl.xml.interface import Bandwidth, BandwidthRate, Interface
from kvmctl.xml.machine import CPU, OS, Clock, CPUFeature, Features, NumaCell, Timer
from kvmctl.xml.memory import HugePage, MemNode, MemoryBacking, MemTune, NumaTune
from kvmctl.xml.metadata import KVMCTL_NS, KvmctlMetadata, Metadata, read_kvmctl_metadata
from kvmctl.xml.storage import BackingStore, StoragePool, StorageVolume

__all__ = [
    "CPU",
    "GUEST_AGENT_CHANNEL",
    "KVMCTL_NS",
    "OS",
    "RNG",
    "BackingStore",
    "Bandwidth",
    "BandwidthRate",
    "CPUFeature",
    "CPUTune",
    "Channel",
    "Clock",
    "Console",
    "Controller",
    "Devices",
    "Disk",
    "Domain",
    "EmulatorSched",
    "Features",
    "Graphics",
    "HugePage",
    "IOThreadPin",
    "IOThreadSched",
    "IOTune",
    "Input",
    "Interface",
    "KvmctlMetadata",
    "MemBalloon",
    "MemNode",
    "MemTune",
    "MemoryBacking",
    "Metadata",
    "NumaCell",
    "NumaTune",
    "Panic",
    "Serial",
    "Shmem",
    "StoragePool",
    "StorageVolume",
    "Timer",
    "VCPUPin",
    "VCPUSched",
    "Video",
    "Vsock",
    "Watchdog",
    "XMLModel",
    "read_kvmctl_metadata",
]
