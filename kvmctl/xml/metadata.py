"""``<metadata>``: kvmctl's ownership record plus other tools' entries.

Every domain kvmctl creates carries one ``<kvmctl:cockpit>`` element, so a
later run can tell its own domains (and the spec revision that made them)
from everything else on the host.
"""

from __future__ import annotations

from typing import Literal

from kvmctl.xml.base import XMLModel, child, parse_xml, unclaimed, value
from kvmctl.xml.convert import INT

KVMCTL_NS = "https://kvmctl.dev/xmlns/kvmctl/1"
KVMCTL_PREFIX = "kvmctl"


def _q(name: str) -> str:
    return f"{{{KVMCTL_NS}}}{name}"


Criticality = Literal["safety", "high", "normal"]


class KvmctlMetadata(XMLModel, tag=_q("cockpit"), nsmap={KVMCTL_PREFIX: KVMCTL_NS}):
    """``set_name`` is the cockpit spec's name, ``vm_name`` the VM's key in it."""

    set_name: str = value(_q("set"))
    vm_name: str = value(_q("vm"))
    spec_hash: str | None = value(_q("spec-hash"), default=None)
    role: str | None = value(_q("role"), default=None)
    criticality: Criticality | None = value(_q("criticality"), default=None)
    # What the planner's diff compares: hashes of the settings groups that need
    # a restart / can change live, and each group's own hash (for the reason).
    restart_hash: str | None = value(_q("restart-hash"), default=None)
    live_hash: str | None = value(_q("live-hash"), default=None)
    groups: str | None = value(_q("groups"), default=None)
    # CPUs this domain owns exclusively, so another set never places vCPUs there.
    dedicated: str | None = value(_q("dedicated"), default=None)
    # The vsock CID the planner gave the VM: kept on the next apply, and never
    # given to another set's VM on this host.
    vsock_cid: int | None = value(_q("vsock-cid"), INT, default=None)


class Metadata(XMLModel, tag="metadata"):
    """``foreign`` holds other applications' metadata elements verbatim."""

    kvmctl: KvmctlMetadata | None = child(KvmctlMetadata, default=None)
    foreign: tuple[str, ...] = unclaimed()


def read_kvmctl_metadata(domain_xml: str) -> KvmctlMetadata | None:
    """kvmctl's record from any domain's XML, or None if kvmctl does not own it.

    Unlike ``Domain.from_xml`` this ignores everything else in the domain, so
    it is safe on domains other tools made with devices this model refuses.
    """
    root = parse_xml(domain_xml)
    metadata = next(root.iterchildren("metadata"), None)
    found = None if metadata is None else next(metadata.iterchildren(KvmctlMetadata.TAG), None)
    return None if found is None else KvmctlMetadata.from_element(found)
