"""The channels example as the user runs it (examples/cockpit-channels.yaml,
under a set and bridge names of its own): a value the cluster's toolbox
writes into `vehicle-state` is read by the HUD's, and the passenger VM has no
`vehicle-state` device, neither in its live XML nor from inside the guest."""

from __future__ import annotations

import secrets
from pathlib import Path

import libvirt
import pytest

from kvmctl.xml.names import shmem_name
from tests.integration.cockpit_helpers import REPO, URI
from tests.integration.ops_helpers import applied_set, guest_run

# The cluster has a dedicated CPU (see the Makefile's integration target).
pytestmark = [pytest.mark.integration, pytest.mark.dedicated_cpus]

TOKEN = secrets.token_hex(2)
SET = f"kvt-chx-{TOKEN}"
TOOL = "/usr/bin/kvmctl-tool"


def example() -> str:
    return (
        (REPO / "examples" / "cockpit-channels.yaml")
        .read_text()
        .replace("name: demo-channels", f"name: {SET}")
        .replace("kvbr-ch-vehicle", f"kvt{TOKEN}cveh")
        .replace("kvbr-ch-media", f"kvt{TOKEN}cmed")
    )


def regions(domain: str) -> list[dict[str, str]]:
    """The toolbox's `shm list`: one dict per ivshmem region in the guest."""
    out = guest_run(domain, TOOL, "shm", "list", timeout=60)
    return [dict(f.split("=", 1) for f in line.split()) for line in out.splitlines()]


def test_cluster_writes_the_hud_reads_and_the_passenger_has_no_such_device(
    tmp_path: Path,
) -> None:
    with applied_set(tmp_path, SET, example()):
        cluster, hud, passenger = (f"{SET}-{vm}" for vm in ("cluster", "hud", "passenger"))
        assert [r["size"] for r in regions(cluster)] == [str(4 << 20)]
        assert [r["size"] for r in regions(hud)] == [str(4 << 20)]

        value = f"speed=87 warn=0 arrow=left {TOKEN}"
        guest_run(cluster, TOOL, "shm", "write", value, timeout=60)
        assert guest_run(hud, TOOL, "shm", "read", timeout=60).strip() == value

        # The passenger sees its own region (media-meta, 1 MiB) and no other.
        assert [r["size"] for r in regions(passenger)] == [str(1 << 20)]
        conn = libvirt.open(URI)
        try:
            xml = conn.lookupByName(passenger).XMLDesc(0)
        finally:
            conn.close()
        assert shmem_name(SET, "vehicle-state") not in xml
        assert shmem_name(SET, "media-meta") in xml
