"""The generated XML is what libvirt accepts and keeps.

Three independent judges: libvirt's RNG schemas (through lxml), the
``virt-xml-validate`` tool, and libvirt's own parser in the ``test:///``
driver, whose read-back must give the same objects.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from kvmctl.xml import Domain, StoragePool, StorageVolume, XMLModel
from tests.unit.test_xml_samples import SAMPLES

pytestmark = pytest.mark.unit

SCHEMA_DIR = Path("/usr/share/libvirt/schemas")
SCHEMAS = {Domain: "domain", StorageVolume: "storagevol", StoragePool: "storagepool"}
# Written the way libvirt writes them back: read-back must be identical.
EXACT = ["domain-full", "domain-cluster"]


def _schema_for(sample: XMLModel) -> str:
    return SCHEMAS[type(sample)]


@pytest.fixture(scope="module")
def libvirt_test_conn() -> Any:
    libvirt = pytest.importorskip("libvirt")
    # The default handler prints every error to stderr; the tests read them as exceptions.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = libvirt.open("test:///default")
    yield conn
    conn.close()


@pytest.mark.skipif(not SCHEMA_DIR.is_dir(), reason="libvirt RNG schemas are not installed")
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_matches_libvirt_schema(name: str) -> None:
    sample = SAMPLES[name]
    schema = etree.RelaxNG(file=str(SCHEMA_DIR / f"{_schema_for(sample)}.rng"))
    doc = etree.fromstring(sample.to_xml().encode())
    assert schema.validate(doc), str(schema.error_log)


def _xml_validate_usable() -> bool:
    # virt-xml-validate shells out to xmllint (libxml2-utils), packaged separately.
    return shutil.which("virt-xml-validate") is not None and shutil.which("xmllint") is not None


@pytest.mark.skipif(not _xml_validate_usable(), reason="virt-xml-validate or xmllint missing")
def test_virt_xml_validate_accepts_every_sample(tmp_path: Path) -> None:
    for name, sample in SAMPLES.items():
        path = tmp_path / f"{name}.xml"
        path.write_text(sample.to_xml(), encoding="utf-8")
        result = subprocess.run(
            ["virt-xml-validate", str(path), _schema_for(sample)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def _define(conn: Any, domain: Domain) -> Domain:
    import libvirt

    dom = conn.defineXML(domain.to_xml())
    try:
        return Domain.from_xml(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    finally:
        dom.undefine()


@pytest.mark.parametrize("name", EXACT)
def test_libvirt_keeps_exactly_what_was_defined(libvirt_test_conn: Any, name: str) -> None:
    sample = SAMPLES[name]
    assert isinstance(sample, Domain)
    assert _define(libvirt_test_conn, sample) == sample


def _assert_kept(ours: Any, theirs: Any, where: str) -> None:
    """Everything we set is in libvirt's version; what we left out it may fill."""
    if isinstance(ours, XMLModel):
        for f in dataclasses.fields(ours):  # type: ignore[arg-type]
            mine = getattr(ours, f.name)
            if mine is None or mine == () or mine is False:
                continue
            _assert_kept(mine, getattr(theirs, f.name), f"{where}.{f.name}")
    elif isinstance(ours, tuple):
        assert len(ours) == len(theirs), where
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            _assert_kept(a, b, f"{where}[{i}]")
    else:
        assert ours == theirs, where


@pytest.mark.parametrize("name", ["domain-minimal", "domain-passthrough"])
def test_libvirt_keeps_every_property_set(libvirt_test_conn: Any, name: str) -> None:
    sample = SAMPLES[name]
    assert isinstance(sample, Domain)
    back = _define(libvirt_test_conn, sample)
    _assert_kept(sample, back, name)
    # What libvirt filled in also parses and round-trips through the model.
    assert Domain.from_xml(back.to_xml()) == back


def test_libvirt_splits_vcpusched_ranges(libvirt_test_conn: Any) -> None:
    # Documents why samples list one <vcpusched> per vCPU.
    from kvmctl.xml import CPUTune, VCPUSched

    base = SAMPLES["domain-minimal"]
    assert isinstance(base, Domain)
    two = dataclasses.replace(
        base,
        vcpus=2,
        cputune=CPUTune(vcpuscheds=(VCPUSched(vcpus="0-1", scheduler="fifo", priority=10),)),
    )
    back = _define(libvirt_test_conn, two)
    assert back.cputune is not None
    assert [s.vcpus for s in back.cputune.vcpuscheds] == ["0", "1"]


def test_storage_xml_is_accepted_by_libvirt(libvirt_test_conn: Any, tmp_path: Path) -> None:
    pool_xml = StoragePool(name="kvmctl-unit", target_path=str(tmp_path)).to_xml()
    pool = libvirt_test_conn.storagePoolDefineXML(pool_xml)
    try:
        pool.create()
        back = StoragePool.from_xml(pool.XMLDesc())
        assert back.name == "kvmctl-unit"
        assert back.target_path == str(tmp_path)
        volume = StorageVolume(name="disk.qcow2", capacity_bytes=1 << 30, format="qcow2")
        vol = pool.createXML(volume.to_xml())
        read = StorageVolume.from_xml(vol.XMLDesc())
        assert read.name == "disk.qcow2"
        assert read.capacity_bytes == 1 << 30
        vol.delete()
        pool.destroy()
    finally:
        pool.undefine()
