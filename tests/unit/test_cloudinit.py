"""Cloud images: the NoCloud seed's content, the ISO it is written to, and the
domain XML that boots the overlay with the seed as a CD-ROM."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pycdlib
import pytest
import yaml

from kvmctl.cockpit.seed import read_seed, seed_iso
from kvmctl.errors import SpecError
from kvmctl.host import images
from kvmctl.planner.cloudinit import SeedPlan, seed_files
from kvmctl.planner.domain import build_domain, build_volume
from kvmctl.planner.nics import NicPlan
from kvmctl.planner.plan import PlanOptions, make_plan
from kvmctl.spec import load_spec
from kvmctl.spec.models import DISK_BUILTINS
from tests.golden import assert_golden
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLOUD = ROOT / "tests" / "data" / "specs" / "cloud.yaml"


def nic(mac: str, cidr: str) -> NicPlan:
    return NicPlan("lan", "br0", mac, ipaddress.IPv4Interface(cidr), False, "kvt0")


def test_user_data_from_a_mapping_is_cloud_config() -> None:
    files = dict(seed_files("web", {"packages": ["nginx"]}, ()))
    assert files["user-data"].startswith("#cloud-config\n")
    assert yaml.safe_load(files["user-data"]) == {"packages": ["nginx"]}
    assert yaml.safe_load(files["meta-data"])["local-hostname"] == "web"


def test_user_data_text_passes_through_and_explicit_key_wins() -> None:
    script = "#!/bin/sh\necho hi"
    files = dict(seed_files("web", {"user_data": script}, ()))
    assert files["user-data"] == script + "\n"
    nested = dict(seed_files("web", {"user_data": {"runcmd": ["true"]}}, ()))
    assert yaml.safe_load(nested["user-data"]) == {"runcmd": ["true"]}


def test_network_config_gives_each_nic_its_planned_address_by_mac() -> None:
    nics = (nic("52:54:00:aa:bb:01", "10.0.0.5/24"), nic("52:54:00:aa:bb:02", "10.0.1.5/24"))
    net = yaml.safe_load(dict(seed_files("web", None, nics))["network-config"])
    assert net["version"] == 2
    assert net["ethernets"]["nic0"] == {
        "match": {"macaddress": "52:54:00:aa:bb:01"},
        "set-name": "eth0",
        "addresses": ["10.0.0.5/24"],
    }
    assert net["ethernets"]["nic1"]["addresses"] == ["10.0.1.5/24"]


def test_instance_id_changes_with_content_only() -> None:
    def iid(config: dict[str, object]) -> str:
        return str(yaml.safe_load(dict(seed_files("web", config, ()))["meta-data"])["instance-id"])

    assert iid({"packages": ["a"]}) == iid({"packages": ["a"]})
    assert iid({"packages": ["a"]}) != iid({"packages": ["b"]})


def test_seed_iso_round_trip_with_the_nocloud_label() -> None:
    seed = SeedPlan("kvmctl", "web-seed.iso", seed_files("web", {"packages": ["x"]}, ()))
    data = seed_iso(seed)
    assert read_seed(data) == dict(seed.files)
    iso = pycdlib.PyCdlib()
    import io

    iso.open_fp(io.BytesIO(data))
    assert iso.pvd.volume_identifier.decode().strip() == "cidata"
    iso.close()


def test_cloud_image_plan_and_domain(regenerate: bool) -> None:
    plan = make_plan(load_spec(CLOUD), facts(cpus=4))
    assert plan.problems == []
    web = plan.vms["web"]
    assert (
        web.kernel is None
        and web.volume.backing == "/var/lib/kvmctl/images/debian-12-genericcloud-amd64.qcow2"
    )
    assert web.seed is not None and web.seed.volume == "cloudy-web-seed.iso"
    net = yaml.safe_load(dict(web.seed.files)["network-config"])
    assert net["ethernets"]["nic0"]["addresses"] == ["10.78.0.20/24"]
    domain = build_domain(web, rt_by_thread=True)
    disk, cdrom = domain.devices.disks
    assert (disk.device, disk.source_volume) == ("disk", "cloudy-web-data.qcow2")
    assert (cdrom.device, cdrom.source_volume, cdrom.target_bus, cdrom.readonly) == (
        "cdrom",
        "cloudy-web-seed.iso",
        "ide",
        True,
    )
    assert domain.os.boot_devices == ("hd",)
    golden = ROOT / "tests" / "data" / "golden" / "cloud"
    assert_golden(golden / "web.xml", domain.to_xml(), regenerate)
    assert_golden(golden / "web.volume.xml", build_volume(web).to_xml(), regenerate)


def test_seed_change_restarts_builtin_images_have_no_seed() -> None:
    base = "name: t\nvms:\n  a: {image: {path: /var/lib/kvmctl/images/x.qcow2, cloud_init: {packages: [a]}}}\n"
    one = make_plan(spec(base), facts()).vms["a"]
    two = make_plan(spec(base.replace("[a]", "[b]")), facts()).vms["a"]
    assert one.fingerprint.restart_hash != two.fingerprint.restart_hash
    assert make_plan(spec("name: t\nvms:\n  a: {}\n"), facts()).vms["a"].seed is None


def test_builtin_debian_12_is_a_cloud_image_backed_by_the_built_disk() -> None:
    text = (
        "name: t\nvms:\n  a:\n    image:\n      builtin: debian-12\n"
        "      cloud_init: {user_data: {packages: [a]}}\n"
    )
    options = PlanOptions(disk_images={"debian-12": "/img/debian-12/disk.qcow2"})
    a = make_plan(spec(text), facts(), options=options).vms["a"]
    assert a.kernel is None and a.initrd is None and a.cmdline is None
    assert a.volume.backing == "/img/debian-12/disk.qcow2"
    assert a.seed is not None and a.seed.volume == "t-a-seed.iso"
    domain = build_domain(a, rt_by_thread=True)
    assert domain.os.boot_devices == ("hd",)
    assert [d.device for d in domain.devices.disks] == ["disk", "cdrom"]


def test_cloud_init_goes_with_cloud_images_only() -> None:
    with pytest.raises(SpecError) as err:
        spec("name: t\nvms:\n  a: {image: {builtin: test-guest, cloud_init: {a: 1}}}\n")
    assert "cloud_init goes with a cloud image" in str(err.value)
    assert "builtin: test-guest" in str(err.value)
    # a disk built-in without user data still gets a seed (instance id, network)
    plain = make_plan(spec("name: t\nvms:\n  a: {image: {builtin: debian-12}}\n"), facts())
    assert plain.vms["a"].seed is not None


def test_the_spec_and_the_image_builder_agree_on_disk_builtins() -> None:
    assert set(DISK_BUILTINS) == set(images.DISK_FLAVOURS)
