"""User text never lands in XML unescaped, and always comes back unchanged."""

from __future__ import annotations

import dataclasses

import pytest
from lxml import etree

from kvmctl.xml import OS, Devices, Disk, Domain, KvmctlMetadata, Metadata, Serial

pytestmark = pytest.mark.unit

NASTY = """a<b>&c 'single' "double" ]]> <!-- x --> &amp; Grüße 仪表 🚗"""


def _nasty_domain(text: str = NASTY) -> Domain:
    return Domain(
        type="qemu",
        name="escape-test",
        title=text,
        description=f"{text}\nsecond line\ttab",
        metadata=Metadata(
            kvmctl=KvmctlMetadata(set_name=text, vm_name=text, role=text, spec_hash=text)
        ),
        memory_kib=65536,
        vcpus=1,
        os=OS(kernel=f"/boot/{text}", initrd=f"/boot/{text}.img", cmdline=f"init=/x msg='{text}'"),
        devices=Devices(
            disks=(Disk(source_file=f"/images/{text}.qcow2", target_dev="vda", serial=text),),
            serials=(Serial(log_file=f"/var/log/{text}.log"),),
        ),
    )


def test_special_characters_are_escaped_and_parse_back_identical() -> None:
    domain = _nasty_domain()
    xml = domain.to_xml()
    assert "a&lt;b&gt;&amp;c" in xml
    assert "<b>" not in xml and "<!-- x -->" not in xml
    assert Domain.from_xml(xml) == domain


def test_every_text_and_attribute_survives_as_data() -> None:
    # Parsed with a plain XML parser, the text is exactly what was put in:
    # nothing was interpreted as markup on the way.
    root = etree.fromstring(_nasty_domain().to_xml().encode())
    assert root.findtext("title") == NASTY
    assert root.find("devices/disk/source").get("file") == f"/images/{NASTY}.qcow2"
    assert root.findtext("os/cmdline") == f"init=/x msg='{NASTY}'"
    assert len(root.find("devices/disk")) == 3  # driver-less: source, target, serial


def test_newlines_in_attributes_survive() -> None:
    domain = dataclasses.replace(
        _nasty_domain(),
        devices=Devices(serials=(Serial(log_file="/var/log/a\nb\r\tc.log"),)),
    )
    assert Domain.from_xml(domain.to_xml()) == domain


def test_text_xml_cannot_hold_is_refused() -> None:
    with pytest.raises(ValueError):
        _nasty_domain("bell\x07").to_xml()


@pytest.mark.parametrize("name", ["a<b", "a b", "../etc", "x/y", "", "é", "-lead", "a" * 65])
def test_unsafe_domain_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="domain name"):
        dataclasses.replace(_nasty_domain(), name=name)


def test_title_must_be_one_line() -> None:
    with pytest.raises(ValueError, match="single line"):
        dataclasses.replace(_nasty_domain(), title="a\nb")


def test_entities_are_not_expanded() -> None:
    # Domain XML can come from a remote host: no external entity may be read.
    hostile = """<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY secret SYSTEM "file:///etc/hostname">]>
<domain type="qemu"><name>x</name><description>&secret;</description>
<memory>1024</memory><vcpu>1</vcpu></domain>"""
    parsed = Domain.from_xml(hostile)
    assert parsed.description in (None, "")


def test_unicode_round_trips_in_golden_encoding() -> None:
    xml = _nasty_domain().to_xml()
    assert "Grüße 仪表 🚗" in xml  # kept as characters, not numeric references
    assert Domain.from_xml(xml.encode("utf-8").decode("utf-8")).title == NASTY
