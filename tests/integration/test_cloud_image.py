"""A VM from a cloud image on real libvirt + QEMU: the per-VM overlay on the
image, the NoCloud seed uploaded as a volume and attached as a CD-ROM, QEMU
opening both; destroy removes overlay and seed, never the image.

No real distribution image can be had offline, so the "cloud image" is a
blank qcow2: the test stops at a started (paused) QEMU, which proves libvirt
and QEMU accept the backing chain and the seed, and reads the seed back."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.virt import Virt
from kvmctl.cockpit.applier import Applier
from kvmctl.cockpit.seed import read_seed
from kvmctl.cockpit.storage import create_storage, ensure_pool
from kvmctl.cockpit.teardown import destroy_domain
from kvmctl.session import open_session
from tests.integration.cockpit_helpers import URI, host_snapshot, write_spec

pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(2)
SET = f"kvt-cl-{TOKEN}"
IMAGE_DIR = Path("/var/lib/kvmctl/images") / f"kvt-cloud-{TOKEN}"


@pytest.fixture
def cloud_spec(tmp_path: Path) -> Iterator[Path]:
    IMAGE_DIR.mkdir(parents=True, exist_ok=True)
    IMAGE_DIR.chmod(0o755)
    image = IMAGE_DIR / "blank-cloud.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    image.chmod(0o644)
    path = write_spec(
        tmp_path,
        f"""name: {SET}
host: {{image_dirs: [{IMAGE_DIR}]}}
vms:
  web:
    memory: {{size: 128MiB}}
    image: {{path: {image}, cloud_init: {{packages: [nginx]}}}}
    disk: {{size: 128MiB}}
""",
    )
    try:
        yield path
    finally:
        virt = Virt(open_connection(URI))
        destroy_domain(virt, f"{SET}-web")
        shutil.rmtree(IMAGE_DIR, ignore_errors=True)


def test_overlay_and_seed_accepted_by_qemu_and_removed_by_destroy(cloud_spec: Path) -> None:
    before = host_snapshot(SET)
    session = open_session(cloud_spec, URI)
    assert session.virt is not None and session.plan.problems == []
    web = session.plan.vms["web"]
    assert web.seed is not None
    applier = Applier(
        session.virt,
        session.plan,
        rt_by_thread=session.facts.rt_group_sched,
        pool_path=session.options.pool_path,
        host_cpus=len(session.facts.cpu_ids),
    )
    ensure_pool(session.virt, applier.journal, session.plan, session.options.pool_path)
    create_storage(session.virt, applier.journal, applier.progress, web)
    applier._define(web, created=True)
    virt = session.virt

    # The seed volume holds exactly the planned files.
    assert read_seed(virt.download_volume(web.seed.pool, web.seed.volume)) == dict(web.seed.files)
    # QEMU opens the overlay (backed by the image) and the seed CD-ROM.
    virt.start_paused(web.domain)
    live = virt.xml(web.domain)
    assert f"volume='{web.seed.volume}'" in live and "device='cdrom'" in live
    assert "blank-cloud.qcow2" in live  # the backing chain libvirt resolved

    removed = destroy_domain(virt, web.domain)
    assert set(removed) == {web.volume.name, web.seed.volume}
    assert (IMAGE_DIR / "blank-cloud.qcow2").is_file()  # the image itself is never touched
    after = host_snapshot(SET)
    assert after["domains"] == before["domains"] == [] and after["volumes"] == []
