"""Region backing files: made private to QEMU's user before QEMU opens them,
grown to size, removed with the set; in a fake /dev/shm."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kvmctl.errors import HostError
from kvmctl.host import channels as hc
from kvmctl.planner.channels import ChannelPlan, SerialPort, ShmRegion

pytestmark = pytest.mark.unit

MIB = 1024**2
ME = (os.getuid(), os.getgid())


CAPS = """\
<capabilities><host>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+107</baselabel>
    <baselabel type='qemu'>+64055:+64055</baselabel>
  </secmodel>
</host></capabilities>
"""


def test_qemu_owner_is_libvirts_dac_label() -> None:
    assert hc.parse_dac_owner(CAPS, "qemu") == (64055, 64055)
    assert hc.parse_dac_owner(CAPS, "kvm") == (64055, 107)
    assert hc.parse_dac_owner("<capabilities><host/></capabilities>", "qemu") is None


def region(name: str = "kvmctl.s.vehicle", size: int = 4 * MIB) -> ShmRegion:
    return ShmRegion("vehicle", name, size, ("a", "b"))


def test_a_new_region_is_private_and_sized(tmp_path: Path) -> None:
    assert hc.prepare_region(region(), ME, tmp_path)
    st = (tmp_path / "kvmctl.s.vehicle").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == ME
    assert st.st_size == 4 * MIB


def test_an_existing_region_keeps_its_bytes_and_loses_other_readers(tmp_path: Path) -> None:
    path = tmp_path / "kvmctl.s.vehicle"
    path.write_bytes(b"\x34\x12\xfe\xca")
    path.chmod(0o644)  # as QEMU would have made it
    assert not hc.prepare_region(region(), ME, tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes()[:4] == b"\x34\x12\xfe\xca"
    assert path.stat().st_size == 4 * MIB
    # A larger file (the region shrank in the spec) is left as it is: QEMU accepts it.
    assert not hc.prepare_region(region(size=1 * MIB), ME, tmp_path)
    assert path.stat().st_size == 4 * MIB


def test_a_directory_or_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kvmctl.s.vehicle").mkdir()
    with pytest.raises(HostError, match="not a regular file kvmctl made"):
        hc.prepare_region(region(), ME, tmp_path)
    target = tmp_path / "target"
    target.write_text("secret")
    target.chmod(0o644)
    (tmp_path / "kvmctl.s.link").symlink_to(target)
    with pytest.raises(HostError, match="not a regular file kvmctl made"):
        hc.prepare_region(region("kvmctl.s.link"), ME, tmp_path)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_text() == "secret"


def test_destroy_removes_only_the_sets_regions(tmp_path: Path) -> None:
    for name in ("kvmctl.s.vehicle", "kvmctl.s.media", "kvmctl.s-2.vehicle", "other"):
        (tmp_path / name).write_bytes(b"x")
    assert hc.remove_set("s", keep={"kvmctl.s.media"}, shm_dir=tmp_path) == ["kvmctl.s.vehicle"]
    assert hc.remove_set("s", shm_dir=tmp_path) == ["kvmctl.s.media"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kvmctl.s-2.vehicle", "other"]
    assert hc.remove_set("s", shm_dir=tmp_path / "none") == []


def test_prepare_makes_what_one_vms_channels_need(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "channels" / "s.c.hb.sock"
    plan = ChannelPlan(
        regions=(region(),), serials=(SerialPort("hb", "c", str(sock), "org.kvmctl.hb"),), owner=ME
    )
    shm = tmp_path / "shm"
    shm.mkdir()
    assert hc.prepare(plan, shm) == [region()]
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o755
    assert hc.prepare(plan, shm) == []  # already there: nothing for a rollback to remove
    hc.remove(region().name, shm)
    assert list(shm.iterdir()) == []
