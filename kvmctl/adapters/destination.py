"""What a migration destination offers, read through its libvirt connection.

A destination may be another machine, so nothing here reads local files:
capabilities, free pages and memory, interfaces and storage pools all come
from the destination's libvirtd.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libvirt
from lxml import etree

from kvmctl.adapters.libvirt import format_version
from kvmctl.host.facts import CpuInfo, HostFacts, HugepagePool, LibvirtInfo, VirtType


@dataclass(frozen=True)
class HostIdentity:
    uri: str
    host_uuid: str
    hostname: str
    libvirt_version: int
    hypervisor_version: int
    machines: dict[str, frozenset[str]] = field(default_factory=dict)  # domain type -> machines


def identity(conn: libvirt.virConnect) -> HostIdentity:
    caps = etree.fromstring(conn.getCapabilities().encode())
    machines: dict[str, set[str]] = {}
    for arch in caps.findall("guest/arch[@name='x86_64']"):
        names = {m.text for m in arch.findall("machine") if m.text}
        names |= {m.get("canonical") for m in arch.findall("machine") if m.get("canonical")}
        for dom in arch.findall("domain"):
            kind = dom.get("type", "")
            extra = {m.text for m in dom.findall("machine") if m.text}
            machines.setdefault(kind, set()).update(names | extra)
    return HostIdentity(
        uri=conn.getURI(),
        host_uuid=caps.findtext("host/uuid", ""),
        hostname=conn.getHostname(),
        libvirt_version=conn.getLibVersion(),
        hypervisor_version=conn.getVersion(),
        machines={k: frozenset(v) for k, v in machines.items()},
    )


def facts(conn: libvirt.virConnect, virt_type: VirtType) -> HostFacts:
    """HostFacts as far as libvirt tells them; the virt type is the migrating
    domain's (the destination must run it the same way)."""
    caps = etree.fromstring(conn.getCapabilities().encode())
    cpus = [
        CpuInfo(
            id=int(cpu.get("id")),
            core=int(cpu.get("core_id", 0)),
            socket=int(cpu.get("socket_id", 0)),
            node=int(cell.get("id", 0)),
        )
        for cell in caps.findall("host/topology/cells/cell")
        for cpu in cell.findall("cpus/cpu")
    ]
    online = _online(conn)
    cpus = [c.model_copy(update={"online": c.id in online}) for c in cpus]
    return HostFacts(
        hostname=conn.getHostname(),
        libvirt=LibvirtInfo(
            uri=conn.getURI(),
            reachable=True,
            daemon_version=format_version(conn.getLibVersion()),
            hypervisor_version=format_version(conn.getVersion()),
        ),
        daemons={"libvirtd": True},
        kvm="usable" if virt_type == "kvm" else "present-but-unusable",
        virt_type=virt_type,
        cpus=cpus,
        memory_total_kib=conn.getInfo()[1] * 1024,
        memory_available_kib=_available_kib(conn),
        hugepages=_hugepages(conn, caps),
        hugetlbfs_mounts=["(destination)"],
        memlock_limit_kib=None,
        cap_sys_resource=True,
    )


def _online(conn: libvirt.virConnect) -> set[int]:
    _count, cpumap, _online_count = conn.getCPUMap()
    return {i for i, up in enumerate(cpumap) if up}


def _available_kib(conn: libvirt.virConnect) -> int:
    stats = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
    return int(stats.get("free", 0) + stats.get("buffers", 0) + stats.get("cached", 0))


def _hugepages(conn: libvirt.virConnect, caps: etree._Element) -> list[HugepagePool]:
    pools = []
    cells = caps.findall("host/topology/cells/cell")
    for cell in cells:
        node = int(cell.get("id", 0))
        for pages in cell.findall("pages"):
            size = int(pages.get("size", 0))
            if size <= 4:
                continue
            free = conn.getFreePages([size], node, 1).get(node, {}).get(size, 0)
            pools.append(
                HugepagePool(size_kib=size, node=node, total=int(pages.text or 0), free=free)
            )
    return pools


def interfaces(conn: libvirt.virConnect) -> set[str]:
    """Network interfaces (bridges among them) present on the destination."""
    return {iface.name() for iface in conn.listAllInterfaces()}
