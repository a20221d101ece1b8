"""The declarative engine itself, on small throwaway models."""

from __future__ import annotations

import dataclasses

import pytest

from kvmctl.xml import Domain, KvmctlMetadata, Metadata
from kvmctl.xml.base import XMLModel, child, children, flag, unclaimed, value, values
from kvmctl.xml.convert import INT, ONOFF, YESNO, rescale

pytestmark = pytest.mark.unit

NS = "urn:example:toy"


class Leaf(XMLModel, tag="leaf"):
    size_kib: int = value("@size", INT, unit="KiB")


class Toy(XMLModel, tag="toy"):
    name: str = value("name")
    kind: str | None = value("@kind", default=None)
    own_text: str | None = value("label", default=None)
    deep: int | None = value("a/b/@c", INT, default=None)
    yes: bool | None = value("a/@yes", YESNO, default=None)
    on: bool | None = value("a/@on", ONOFF, default=None)
    marked: bool = flag("a/mark")
    tags: tuple[str, ...] = values("tag/@name")
    lines: tuple[str, ...] = values("lines/line")
    wrapped: tuple[Leaf, ...] | None = children(Leaf, "wrap", default=None)
    leaves: tuple[Leaf, ...] = children(Leaf, default=())
    first: Leaf | None = child(Leaf, tag="first", default=None)
    rest: tuple[str, ...] = unclaimed()


class Spaced(XMLModel, tag=f"{{{NS}}}root", nsmap={"toy": NS}):
    item: str = value(f"{{{NS}}}item")


def test_paths_share_intermediate_elements_in_declaration_order() -> None:
    toy = Toy(name="n", kind="k", deep=3, yes=True, on=False, marked=True)
    assert toy.to_xml() == (
        '<toy kind="k">\n'
        "  <name>n</name>\n"
        '  <a yes="yes" on="off">\n'
        '    <b c="3"/>\n'
        "    <mark/>\n"
        "  </a>\n"
        "</toy>\n"
    )
    assert Toy.from_xml(toy.to_xml()) == toy


def test_repeated_scalars_wrappers_and_tag_overrides() -> None:
    toy = Toy(
        name="n",
        tags=("x", "y"),
        lines=("one", "two"),
        wrapped=(Leaf(size_kib=1),),
        leaves=(Leaf(size_kib=2), Leaf(size_kib=3)),
        first=Leaf(size_kib=4),
    )
    xml = toy.to_xml()
    assert '<tag name="x"/>' in xml and "<line>two</line>" in xml
    assert '<first size="4" unit="KiB"/>' in xml
    assert Toy.from_xml(xml) == toy


def test_empty_wrapper_differs_from_no_wrapper() -> None:
    assert "<wrap/>" in Toy(name="n", wrapped=()).to_xml()
    assert "wrap" not in Toy(name="n").to_xml()
    assert Toy.from_xml("<toy><name>n</name><wrap/></toy>").wrapped == ()
    assert Toy.from_xml("<toy><name>n</name></toy>").wrapped is None


def test_unclaimed_children_are_kept_verbatim() -> None:
    toy = Toy.from_xml("<toy><name>n</name><x:o xmlns:x='urn:o' k='v'><x:p/></x:o><zz/></toy>")
    assert toy.rest == ('<x:o xmlns:x="urn:o" k="v"><x:p/></x:o>', "<zz/>")
    assert Toy.from_xml(toy.to_xml()) == toy


def test_namespaced_models_use_their_prefix() -> None:
    xml = Spaced(item="i").to_xml()
    assert xml == f'<toy:root xmlns:toy="{NS}">\n  <toy:item>i</toy:item>\n</toy:root>\n'
    assert Spaced.from_xml(xml) == Spaced(item="i")


def test_element_without_text_counts_as_absent() -> None:
    assert Toy.from_xml("<toy><name>n</name><label/></toy>").own_text is None


def test_missing_required_value_is_named() -> None:
    with pytest.raises(ValueError, match="<toy> lacks required name"):
        Toy.from_xml("<toy/>")


def test_wrong_root_and_bad_xml_are_value_errors() -> None:
    with pytest.raises(ValueError, match="expected <toy>, got <domain>"):
        Toy.from_xml("<domain/>")
    with pytest.raises(ValueError, match="not well-formed"):
        Toy.from_xml("<toy><name>")


def test_conversion_errors_name_the_path() -> None:
    with pytest.raises(ValueError, match="a/b/@c"):
        Toy.from_xml("<toy><name>n</name><a><b c='three'/></a></toy>")
    with pytest.raises(ValueError, match="a/@yes: expected 'yes' or 'no'"):
        Toy.from_xml("<toy><name>n</name><a yes='true'/></toy>")


def test_wrong_python_types_are_refused() -> None:
    with pytest.raises(TypeError, match="Toy.deep"):
        Toy(name="n", deep="3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Toy.deep"):
        Toy(name="n", deep=True)
    with pytest.raises(TypeError, match="Toy.leaves"):
        Toy(name="n", leaves=[Leaf(size_kib=1)])  # type: ignore[arg-type]


def test_models_are_frozen_and_hashable() -> None:
    toy = Toy(name="n", leaves=(Leaf(size_kib=1),))
    with pytest.raises(dataclasses.FrozenInstanceError):
        toy.name = "m"  # type: ignore[misc]
    assert hash(toy) == hash(Toy(name="n", leaves=(Leaf(size_kib=1),)))


def test_rescale() -> None:
    assert rescale(1, "GiB", "KiB") == 1048576
    assert rescale(1, "G", "bytes") == 1 << 30
    assert rescale(1000, "KB", "bytes") == 1000000
    with pytest.raises(ValueError):
        rescale(1, "b", "KiB")


def test_kvmctl_metadata_next_to_foreign_metadata() -> None:
    xml = (
        "<domain type='kvm'><name>a</name><memory>1024</memory><vcpu>1</vcpu><metadata>"
        "<other:app xmlns:other='http://example.org/other'>keep me</other:app>"
        "<kvmctl:cockpit xmlns:kvmctl='https://kvmctl.dev/xmlns/kvmctl/1'>"
        "<kvmctl:set>demo</kvmctl:set><kvmctl:vm>hud</kvmctl:vm>"
        "<kvmctl:criticality>normal</kvmctl:criticality></kvmctl:cockpit>"
        "</metadata></domain>"
    )
    domain = Domain.from_xml(xml)
    assert domain.metadata == Metadata(
        kvmctl=KvmctlMetadata(set_name="demo", vm_name="hud", criticality="normal"),
        foreign=('<other:app xmlns:other="http://example.org/other">keep me</other:app>',),
    )
    assert "keep me" in domain.to_xml()
    assert Domain.from_xml(domain.to_xml()) == domain


def test_metadata_of_other_tools_alone_is_not_ours() -> None:
    xml = (
        "<domain type='kvm'><name>a</name><memory>1024</memory><vcpu>1</vcpu><metadata>"
        "<libosinfo:libosinfo xmlns:libosinfo='http://libosinfo.org/xmlns/libvirt/domain/1.0'>"
        "<libosinfo:os id='http://debian.org/debian/12'/></libosinfo:libosinfo>"
        "</metadata></domain>"
    )
    metadata = Domain.from_xml(xml).metadata
    assert metadata is not None and metadata.kvmctl is None
    assert len(metadata.foreign) == 1


FOREIGN_DOMAIN = """<domain type='kvm' id='3'><name>someone-else</name>
<memory unit='KiB'>1024</memory><vcpu>1</vcpu><metadata>{meta}</metadata>
<devices><interface type='vdpa'><source dev='/dev/vhost-vdpa-0'/></interface>
<hostdev mode='subsystem' type='pci'/></devices></domain>"""


def test_ownership_is_readable_from_domains_the_model_refuses() -> None:
    from kvmctl.xml import read_kvmctl_metadata

    ours = KvmctlMetadata(set_name="demo", vm_name="hud").to_xml()
    with pytest.raises(ValueError):
        Domain.from_xml(FOREIGN_DOMAIN.format(meta=ours))
    assert read_kvmctl_metadata(FOREIGN_DOMAIN.format(meta=ours)) == KvmctlMetadata(
        set_name="demo", vm_name="hud"
    )
    assert read_kvmctl_metadata(FOREIGN_DOMAIN.format(meta="")) is None
    assert read_kvmctl_metadata("<domain><name>x</name></domain>") is None


def test_live_xml_extras_are_ignored() -> None:
    # What a running domain adds (ids, aliases, addresses, seclabels) is not modelled.
    live = Domain.from_xml(
        "<domain type='qemu' id='7'><name>a</name><memory unit='KiB'>1024</memory>"
        "<vcpu placement='static'>1</vcpu><resource><partition>/machine</partition></resource>"
        "<devices><interface type='user'><mac address='52:54:00:12:34:56'/>"
        "<model type='virtio'/><alias name='net0'/>"
        "<address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></interface>"
        "<serial type='file'><source path='/tmp/s.log' append='on'/>"
        "<target type='isa-serial' port='0'><model name='isa-serial'/></target></serial>"
        "</devices><seclabel type='dynamic' model='dac' relabel='yes'/></domain>"
    )
    assert live.devices.interfaces[0].alias == "net0"
    assert live.devices.serials[0].source_path == "/tmp/s.log"


def test_package_docstring_example_runs() -> None:
    import textwrap

    import kvmctl.xml

    assert kvmctl.xml.__doc__ is not None
    example = kvmctl.xml.__doc__.split("::", 1)[1].split("Bad values", 1)[0]
    exec(textwrap.dedent(example), vars(kvmctl.xml).copy())  # noqa: S102
