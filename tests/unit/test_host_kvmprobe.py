"""The KVM verdict: decision table, per-boot cache, device access, probe guest XML."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

import pytest
from lxml import etree

from kvmctl.host import kvmdevice as kd
from kvmctl.host import kvmprobe as kp
from kvmctl.host import probeguest as pg
from kvmctl.host.facts import VirtType

pytestmark = pytest.mark.unit


@dataclass(frozen=True)
class Outcome:
    reached: bool
    seconds: float
    start_error: str | None = None
    stopped_early: bool = False


class FakeBoots:
    """Stands in for the libvirt booter in the pure decision (not a libvirt mock:
    decide_kvm only ever sees outcomes)."""

    def __init__(self, **outcomes: Outcome):
        self.outcomes = outcomes
        self.calls: list[str] = []

    def __call__(self, virt_type: VirtType) -> Outcome:
        self.calls.append(virt_type)
        return self.outcomes[virt_type]


IMAGE = pg.ProbeImage(Path("/img/test-guest/vmlinuz"), Path("/img/test-guest/initrd.img"), "ab")
BOTH = {"kvm", "qemu"}


@pytest.fixture
def device(tmp_path: Path) -> Path:
    dev = tmp_path / "kvm"
    dev.write_text("")
    return dev


def test_absent_when_the_device_is_missing(tmp_path: Path) -> None:
    boots = FakeBoots()
    v = kp.decide_kvm(tmp_path / "nope", BOTH, IMAGE, boots)
    assert (v.status, v.virt_type, v.probed) == ("absent", "qemu", False)
    assert "does not exist" in v.reason
    assert boots.calls == []


def test_absent_when_libvirt_offers_no_kvm(device: Path) -> None:
    v = kp.decide_kvm(device, {"qemu"}, IMAGE, FakeBoots())
    assert v.status == "absent"
    assert "domain type 'kvm'" in v.reason


def test_usable_when_the_guest_reaches_user_space(device: Path) -> None:
    boots = FakeBoots(kvm=Outcome(True, 0.42))
    v = kp.decide_kvm(device, BOTH, IMAGE, boots)
    assert (v.status, v.virt_type, v.probed, v.kvm_seconds) == ("usable", "kvm", True, 0.42)
    assert boots.calls == ["kvm"]  # no TCG boot needed


def test_hang_under_kvm_but_tcg_boots(device: Path) -> None:
    boots = FakeBoots(kvm=Outcome(False, 8.0), qemu=Outcome(True, 2.5))
    v = kp.decide_kvm(device, BOTH, IMAGE, boots, timeout=8)
    assert (v.status, v.virt_type, v.tcg_ok, v.blocking) == (
        "present-but-unusable",
        "qemu",
        True,
        False,
    )
    assert "did not reach user space within 8 s" in v.reason
    assert "under TCG in 2.5 s" in v.reason
    assert boots.calls == ["kvm", "qemu"]


def test_start_failure_and_early_stop_are_told_apart(device: Path) -> None:
    refused = FakeBoots(
        kvm=Outcome(False, 0.1, start_error="failed to set MSR 0x10a"), qemu=Outcome(True, 2)
    )
    v = kp.decide_kvm(device, BOTH, IMAGE, refused)
    assert "could not start it: failed to set MSR 0x10a" in v.reason
    stopped = FakeBoots(kvm=Outcome(False, 1.5, stopped_early=True), qemu=Outcome(True, 2))
    v = kp.decide_kvm(device, BOTH, IMAGE, stopped)
    assert "stopped after 1.5 s" in v.reason


def test_failing_under_both_blames_the_image(device: Path) -> None:
    boots = FakeBoots(kvm=Outcome(False, 8), qemu=Outcome(False, 30))
    v = kp.decide_kvm(device, BOTH, IMAGE, boots)
    assert v.status == "present-but-unusable"
    assert v.blocking and v.tcg_ok is False
    assert "image" in v.reason and "make images" in v.reason
    # KVM had 8 s, the TCG fallback (only proving the image, maybe on a busy host) 30 s
    assert "under KVM (it did not reach user space within 8 s)" in v.reason
    assert "under TCG (it did not reach user space within 30 s)" in v.reason


def test_the_tcg_boot_gets_the_longer_bound(tmp_path: Path) -> None:
    booted: list[tuple[str, float]] = []

    def boot_xml(xml: str, log: Path, marker: str, timeout: float) -> Outcome:
        booted.append(("kvm" if 'type="kvm"' in xml or "type='kvm'" in xml else "qemu", timeout))
        return Outcome(False, timeout)

    boot = kp.libvirt_booter(boot_xml, IMAGE, 8.0, workdir=tmp_path)
    boot("kvm")
    boot("qemu")
    assert booted == [("kvm", 8.0), ("qemu", kp.TCG_TIMEOUT)]


def test_no_tcg_to_fall_back_on(tmp_path: Path, device: Path) -> None:
    boots = FakeBoots(kvm=Outcome(False, 8))
    v = kp.decide_kvm(device, {"kvm"}, IMAGE, boots)
    assert v.status == "present-but-unusable" and "no TCG" in v.reason and v.blocking
    assert boots.calls == ["kvm"]
    absent = kp.decide_kvm(tmp_path / "nope", set(), IMAGE, boots)
    assert absent.status == "absent" and absent.blocking and "no TCG" in absent.reason
    assert not kp.decide_kvm(tmp_path / "nope", {"qemu"}, IMAGE, boots).blocking


def test_no_image_decides_as_far_as_it_can(device: Path) -> None:
    v = kp.decide_kvm(device, BOTH, None, None, image_problem="guest image 'test-guest' is missing")
    assert v.status == "present-but-unusable"
    assert v.blocking and not v.probed
    assert "make images" in v.reason and "missing" in v.reason


def test_access_problem_is_reported_without_booting(device: Path) -> None:
    boots = FakeBoots()
    v = kp.decide_kvm(device, BOTH, IMAGE, boots, access_problem="kvm cannot be opened by 'q'")
    assert (v.status, v.reason) == ("present-but-unusable", "kvm cannot be opened by 'q'")
    assert boots.calls == []


# --- cache ---------------------------------------------------------------------------------


def test_cache_round_trip_and_invalidation(tmp_path: Path, device: Path) -> None:
    cache = tmp_path / "run" / kp.CACHE_NAME
    key = kp.cache_key("boot-1", device, "qemu:///system", "sha")
    verdict = kp.KvmVerdict("usable", "fine", "kvm", probed=True, kvm_seconds=0.3)
    assert kp.load_cached(cache, key) is None
    kp.store_cached(cache, key, verdict)
    loaded = kp.load_cached(cache, key)
    assert loaded is not None and loaded.cached
    assert loaded == kp.KvmVerdict(
        "usable", "fine", "kvm", probed=True, cached=True, kvm_seconds=0.3
    )
    assert kp.source_of(loaded) == "cached" and kp.source_of(verdict) == "booted"
    for other in (
        kp.cache_key("boot-2", device, "qemu:///system", "sha"),  # rebooted
        kp.cache_key("boot-1", device, "qemu:///system", "sha2"),  # image rebuilt
        kp.cache_key("boot-1", tmp_path / "other", "qemu:///system", "sha"),  # other device
    ):
        assert kp.load_cached(cache, other) is None
    device.chmod(0o600)
    assert kp.load_cached(cache, kp.cache_key("boot-1", device, "qemu:///system", "sha")) is None


def test_cache_ignores_garbage(tmp_path: Path) -> None:
    cache = tmp_path / kp.CACHE_NAME
    key = {"boot_id": "x"}
    cache.write_text("not json")
    assert kp.load_cached(cache, key) is None
    cache.write_text('{"key": {"boot_id": "x"}, "verdict": {"unexpected": 1}}')
    assert kp.load_cached(cache, key) is None


def test_cache_on_read_only_place_is_skipped(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    kp.store_cached(blocker / "sub" / kp.CACHE_NAME, {}, kp.KvmVerdict("absent", "x", "qemu"))


# --- device access for QEMU's user -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "owner", "group", "uid", "gids", "ok"),
    [
        (0o600, 0, 0, 0, [0], True),  # root
        (0o600, 0, 0, 64055, [107, 64055], False),  # Debian without the udev rule
        (0o660, 0, 107, 64055, [107, 64055], True),  # root:kvm 0660, user in kvm
        (0o660, 0, 107, 1000, [1000], False),
        (0o666, 0, 0, 1000, [1000], True),
        (0o640, 0, 107, 64055, [107], False),  # read-only for the group
        (0o600, 64055, 0, 64055, [64055], True),
    ],
)
def test_can_access(mode: int, owner: int, group: int, uid: int, gids: list[int], ok: bool) -> None:
    assert kd.can_access(mode, owner, group, uid, gids) is ok


def test_parse_qemu_conf_user() -> None:
    text = '#user = "root"\n user = "libvirt-qemu"\ngroup="kvm"\n'
    assert kd.parse_qemu_conf_user(text) == ("libvirt-qemu", "kvm")
    assert kd.parse_qemu_conf_user('# user = "root"\n') == (None, None)


def test_qemu_access_problem_names_the_user_and_the_fix(tmp_path: Path) -> None:
    assert pwd.getpwnam("nobody").pw_uid != os.getuid()
    dev = tmp_path / "kvm"
    dev.write_text("")
    dev.chmod(0o600)
    conf = tmp_path / "qemu.conf"
    conf.write_text('user = "nobody"\n')
    problem = kd.qemu_access_problem(dev, conf)
    assert problem is not None
    assert "'nobody'" in problem and "chmod 0660" in problem and "0600" in problem
    dev.chmod(0o666)
    assert kd.qemu_access_problem(dev, conf) is None
    conf.write_text('user = "no-such-user-here"\n')
    dev.chmod(0o600)
    assert kd.qemu_access_problem(dev, conf) is None  # unknown user: let the boot decide
    assert kd.qemu_access_problem(tmp_path / "missing", conf) is None


# --- capabilities and the probe guest ------------------------------------------------------

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch></cpu></host>
  <guest><os_type>hvm</os_type>
    <arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch></guest>
  <guest><os_type>hvm</os_type>
    <arch name='x86_64'><wordsize>64</wordsize><domain type='qemu'/></arch></guest>
</capabilities>"""


def test_guest_domain_types_per_arch() -> None:
    assert kd.guest_domain_types(CAPS, "x86_64") == {"qemu"}
    assert kd.guest_domain_types(CAPS, "i686") == {"qemu", "kvm"}
    assert kd.guest_domain_types(CAPS, "aarch64") == set()


@pytest.mark.parametrize("virt_type", ["kvm", "qemu"])
def test_probe_domain_xml(virt_type: VirtType, tmp_path: Path) -> None:
    log = tmp_path / "serial & log.txt"
    root = etree.fromstring(pg.probe_domain_xml("kvmctl-probe-1", virt_type, IMAGE, log))
    assert root.get("type") == virt_type
    assert root.findtext("name") == "kvmctl-probe-1"
    assert int(root.findtext("memory") or 0) == pg.PROBE_MEMORY_MIB * 1024
    assert root.findtext("os/kernel") == str(IMAGE.kernel)
    assert root.findtext("os/initrd") == str(IMAGE.initrd)
    assert root.findtext("os/cmdline") == pg.PROBE_CMDLINE
    assert "kvmctl.probe=1" in pg.PROBE_CMDLINE and "console=ttyS0" in pg.PROBE_CMDLINE
    assert root.find("cpu") is None  # never host-passthrough
    assert root.findall("devices/disk") == []
    serial = root.find("devices/serial")
    assert serial is not None and serial.get("type") == "file"
    assert serial.find("source").get("path") == str(log)  # type: ignore[union-attr]
    assert root.find("devices/memballoon").get("model") == "none"  # type: ignore[union-attr]
    assert [root.findtext(t) for t in ("on_poweroff", "on_reboot", "on_crash")] == ["destroy"] * 3


def test_device_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMCTL_KVM_DEVICE", raising=False)
    assert kp.kvm_device() == Path("/dev/kvm")
    monkeypatch.setenv("KVMCTL_KVM_DEVICE", "/nonexistent")
    assert kp.kvm_device() == Path("/nonexistent")


def test_locate_image_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_IMAGE_DIR", str(tmp_path))
    image, problem = pg.locate_image()
    assert image is None
    assert "test-guest" in problem and "make images" in problem
