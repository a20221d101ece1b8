"""``<memoryBacking>``, ``<memtune>`` and ``<numatune>``. Sizes are KiB."""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, children, flag, value
from kvmctl.xml.convert import INT
from kvmctl.xml.names import validate_cpuset


class HugePage(XMLModel, tag="page"):
    """One page size to back guest RAM with, optionally only for some guest NUMA nodes."""

    size_kib: int = value("@size", INT, unit="KiB")
    nodeset: str | None = value("@nodeset", default=None)

    def _validate(self) -> None:
        if self.nodeset is not None:
            validate_cpuset(self.nodeset)


class MemoryBacking(XMLModel, tag="memoryBacking"):
    """``hugepages=()`` writes a bare ``<hugepages/>`` (the host's default page
    size); None writes no hugepages element at all."""

    hugepages: tuple[HugePage, ...] | None = children(HugePage, "hugepages", default=None)
    nosharepages: bool = flag("nosharepages")
    locked: bool = flag("locked")
    source_type: Literal["file", "anonymous", "memfd"] | None = value("source/@type", default=None)
    access_mode: Literal["shared", "private"] | None = value("access/@mode", default=None)
    allocation_mode: Literal["immediate", "ondemand"] | None = value(
        "allocation/@mode", default=None
    )
    allocation_threads: int | None = value("allocation/@threads", INT, default=None)
    discard: bool = flag("discard")


class MemTune(XMLModel, tag="memtune"):
    """The QEMU driver refuses ``min_guarantee``; hosts with a low memlock
    limit refuse ``hard_limit`` at start (it also caps locked memory)."""

    hard_limit_kib: int | None = value("hard_limit", INT, unit="KiB", default=None)
    soft_limit_kib: int | None = value("soft_limit", INT, unit="KiB", default=None)
    min_guarantee_kib: int | None = value("min_guarantee", INT, unit="KiB", default=None)
    swap_hard_limit_kib: int | None = value("swap_hard_limit", INT, unit="KiB", default=None)


NumaMode = Literal["strict", "preferred", "interleave", "restrictive"]


class MemNode(XMLModel, tag="memnode"):
    """Host NUMA policy for one guest NUMA cell."""

    cellid: int = value("@cellid", INT)
    mode: NumaMode = value("@mode")
    nodeset: str = value("@nodeset")

    def _validate(self) -> None:
        validate_cpuset(self.nodeset)


class NumaTune(XMLModel, tag="numatune"):
    mode: NumaMode | None = value("memory/@mode", default=None)
    nodeset: str | None = value("memory/@nodeset", default=None)
    placement: Literal["static", "auto"] | None = value("memory/@placement", default=None)
    memnodes: tuple[MemNode, ...] = children(MemNode, default=())

    def _validate(self) -> None:
        if self.nodeset is not None:
            validate_cpuset(self.nodeset)
