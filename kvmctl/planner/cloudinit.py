"""cloud-init NoCloud seed for VMs booted from a distribution's cloud image
(`image: {path: ..., cloud_init: {...}}`): what goes into the seed, as text (pure).

The seed carries user-data (the spec's cloud_init, as #cloud-config),
meta-data (an instance id that changes with the content, so cloud-init runs
again after a change) and network-config v2 giving each NIC, matched by its
MAC, the address kvmctl planned for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from kvmctl.planner.nics import NicPlan

SEED_LABEL = "cidata"  # the volume label NoCloud looks for


@dataclass(frozen=True)
class SeedPlan:
    pool: str
    volume: str
    files: tuple[tuple[str, str], ...]  # (file name, content), in a stable order

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self.files).encode()).hexdigest()[:12]


def seed_files(
    vm: str, cloud_init: dict[str, Any] | None, nics: tuple[NicPlan, ...]
) -> tuple[tuple[str, str], ...]:
    config = dict(cloud_init or {})
    user = config.pop("user_data", None)
    if user is None:
        user = config  # the whole block is cloud-config
    if isinstance(user, str):
        user_data = user if user.endswith("\n") else user + "\n"
    else:
        user_data = "#cloud-config\n" + yaml.safe_dump(user, sort_keys=True)
    network = {
        "version": 2,
        "ethernets": {
            f"nic{i}": {
                "match": {"macaddress": nic.mac},
                "set-name": f"eth{i}",
                "addresses": [nic.address.with_prefixlen],
            }
            for i, nic in enumerate(nics)
        },
    }
    network_config = yaml.safe_dump(network, sort_keys=True)
    content_id = hashlib.sha256((user_data + network_config).encode()).hexdigest()[:12]
    meta_data = yaml.safe_dump({"instance-id": f"{vm}-{content_id}", "local-hostname": vm})
    return (("meta-data", meta_data), ("network-config", network_config), ("user-data", user_data))
