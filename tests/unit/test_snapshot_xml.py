"""Snapshot XML: names validated, user text escaped, libvirt's answers read back."""

from __future__ import annotations

import pytest

from kvmctl.xml.snapshot import (
    ChainLayer,
    DomainSnapshot,
    SnapshotDisk,
    disk_chain,
    disk_targets,
    validate_snapshot_name,
)

pytestmark = pytest.mark.unit

NASTY = """a<b>&c 'single' "double" ]]> <!-- x --> &amp; Grüße 仪表 🚗\nline\ttab"""


@pytest.mark.parametrize("name", ["s1", "before-update", "v1.2+rc_3", "A", "9" * 64])
def test_good_names(name: str) -> None:
    assert validate_snapshot_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x<y",
        "a&b",
        "q'uote",
        'd"q',
        "$(id)",
        "`id`",
        "a;b",
        "a|b",
        "a b",
        "a/b",
        "../up",
        ".hidden",
        "-flag",
        "tab\tname",
        "new\nline",
        "ü",
        "9" * 65,
    ],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_snapshot_name(name)


def test_non_string_name() -> None:
    with pytest.raises(ValueError):
        validate_snapshot_name(None)


def test_internal_snapshot_xml_round_trip() -> None:
    snap = DomainSnapshot(
        name="s1",
        description=NASTY,
        memory="internal",
        disks=(SnapshotDisk(name="vda", snapshot="internal"),),
    )
    xml = snap.to_xml()
    assert "a&lt;b&gt;&amp;c" in xml and "<!-- x -->" not in xml
    assert DomainSnapshot.from_xml(xml) == snap
    assert snap.kind == "internal" and snap.has_memory


def test_external_snapshot_xml() -> None:
    snap = DomainSnapshot(
        name="e1",
        memory="no",
        disks=(
            SnapshotDisk(
                name="vda",
                snapshot="external",
                source_file="/pool/set-a-data.e1.qcow2",
                driver_type="qcow2",
            ),
        ),
    )
    xml = snap.to_xml()
    assert '<disk name="vda" snapshot="external" type="file">' in xml
    assert '<source file="/pool/set-a-data.e1.qcow2"/>' in xml
    assert DomainSnapshot.from_xml(xml) == snap
    assert snap.kind == "external" and not snap.has_memory


def test_bad_name_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="may only contain"):
        DomainSnapshot(name="x<y>")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "vd a", "snapshot": "internal"},
        {"name": "vda", "snapshot": "sometimes"},
        {"name": "vda", "snapshot": "internal", "source_file": "/x.qcow2"},
        {"name": "vda", "snapshot": "external", "source_file": "relative.qcow2"},
        {"name": "vda", "snapshot": "external", "source_file": "/a\nb.qcow2"},
    ],
)
def test_bad_disks(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        SnapshotDisk(**kwargs)  # type: ignore[arg-type]


def test_bad_memory_kind_and_nul() -> None:
    with pytest.raises(ValueError):
        DomainSnapshot(name="s", memory="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DomainSnapshot(name="s", description="a\x00b")


LIBVIRT_SNAPSHOT = """<domainsnapshot>
  <name>g1</name>
  <description>{"kvmctl-snapshot":1}</description>
  <state>paused</state>
  <parent>
    <name>s1</name>
  </parent>
  <creationTime>1795627441</creationTime>
  <memory snapshot='internal'/>
  <disks>
    <disk name='vda' snapshot='internal'/>
  </disks>
  <domain type='qemu'><name>x</name><devices/></domain>
  <cookie><cpu mode='custom'/></cookie>
</domainsnapshot>"""


def test_reads_what_libvirt_returns() -> None:
    snap = DomainSnapshot.from_xml(LIBVIRT_SNAPSHOT)
    assert snap.name == "g1"
    assert snap.state == "paused"
    assert snap.parent == "s1"
    assert snap.creation_time == 1795627441
    assert snap.disks == (SnapshotDisk(name="vda", snapshot="internal"),)
    # read-only fields are never written back
    assert "creationTime" not in snap.to_xml() and "parent" not in snap.to_xml()


def test_rejects_other_root() -> None:
    with pytest.raises(ValueError):
        DomainSnapshot.from_xml("<domain/>")


LIVE = """<domain type='qemu'><name>set-b</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/pool/set-b-data.e2.qcow2' index='3'/>
    <backingStore type='file' index='2'>
      <format type='qcow2'/>
      <source file='/pool/set-b-data.e1.qcow2'/>
      <backingStore type='volume' index='1'>
        <format type='qcow2'/>
        <source pool='kvmctl' volume='set-b-data.qcow2'/>
        <backingStore/>
      </backingStore>
    </backingStore>
    <target dev='vda' bus='virtio'/>
  </disk>
  <disk type='file' device='cdrom'><target dev='hdc'/></disk>
  <disk type='file' device='disk'><source file='/ro.img'/><readonly/><target dev='vdb'/></disk>
</devices></domain>"""


def test_disk_chain_top_first() -> None:
    assert disk_chain(LIVE, "vda") == (
        ChainLayer(3, file="/pool/set-b-data.e2.qcow2"),
        ChainLayer(2, file="/pool/set-b-data.e1.qcow2"),
        ChainLayer(1, pool="kvmctl", volume="set-b-data.qcow2"),
    )
    assert disk_chain(LIVE, "vda")[2].label == "kvmctl/set-b-data.qcow2"
    assert disk_chain(LIVE, "vdz") == ()
    assert disk_chain("<domain/>", "vda") == ()


def test_disk_chain_of_inactive_xml_has_no_indexes() -> None:
    inactive = LIVE.replace(" index='3'", "").replace(" index='2'", "").replace(" index='1'", "")
    assert [layer.index for layer in disk_chain(inactive, "vda")] == [None, None, None]


def test_disk_targets_skip_cdrom_and_readonly() -> None:
    assert disk_targets(LIVE) == ("vda",)
    assert disk_targets("<domain/>") == ()
