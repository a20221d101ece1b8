"""kvmctl.cockpit.record: the spec file behind each set, and VMs found by domain or VM name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from kvmctl.adapters.virt import DomainInfo
from kvmctl.cockpit import record
from kvmctl.errors import UsageError
from kvmctl.xml.metadata import KvmctlMetadata

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _specs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_SPECS_DIR", str(tmp_path / "specs"))


@dataclass
class _Conn:
    def getURI(self) -> str:  # noqa: N802 - libvirt's name
        return "qemu:///system"


class _Virt:
    """What find_vms reads of a connection: its domains and their metadata."""

    conn = _Conn()
    uri = "qemu:///system"

    def __init__(self, *domains: tuple[str, str, str] | str):
        self._domains = [
            DomainInfo(d, True, 1, None)
            if isinstance(d, str)
            else DomainInfo(d[0], True, 1, KvmctlMetadata(set_name=d[1], vm_name=d[2]))
            for d in domains
        ]

    def domains(self) -> list[DomainInfo]:
        return self._domains


def test_remembered_spec_is_found_until_forgotten(tmp_path: Path) -> None:
    spec = tmp_path / "cockpit.yaml"
    spec.write_text("name: demo\n")
    record.remember("demo", spec, "abc")
    assert record.spec_of("demo") == spec.resolve()
    record.forget("demo")
    record.forget("demo")  # twice is fine
    with pytest.raises(UsageError, match="no spec on record for cockpit 'demo'"):
        record.spec_of("demo")


def test_a_spec_file_gone_since_apply_is_named(tmp_path: Path) -> None:
    spec = tmp_path / "cockpit.yaml"
    spec.write_text("name: demo\n")
    record.remember("demo", spec, "abc")
    spec.unlink()
    with pytest.raises(UsageError, match=r"applied from .*cockpit.yaml, which is gone"):
        record.spec_of("demo")


def test_vms_by_domain_or_vm_name(tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text("name: demo\n")
    record.remember("demo", spec, "abc")
    virt = _Virt(("demo-ivi", "demo", "ivi"), ("demo-hud", "demo", "hud"), "someone-elses")
    assert record.find_vms(virt, ["ivi", "demo-hud"]) == (spec.resolve(), ["ivi", "hud"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["nope"], "no kvmctl domain or VM named 'nope' on qemu:///system"),
        (["someone-elses"], "no kvmctl domain or VM named 'someone-elses'"),
        (["ivi"], r"'ivi' is a VM of several cockpits \(demo-ivi, other-ivi\): name the domain"),
        (["demo-ivi", "other-hud"], r"belong to different cockpits \(demo, other\)"),
        (["other-hud"], "no spec on record for cockpit 'other'"),
    ],
)
def test_vm_lookup_errors(names: list[str], message: str, tmp_path: Path) -> None:
    spec = tmp_path / "c.yaml"
    spec.write_text("name: demo\n")
    record.remember("demo", spec, "abc")
    virt = _Virt(
        ("demo-ivi", "demo", "ivi"),
        ("other-ivi", "other", "ivi"),
        ("other-hud", "other", "hud"),
        "someone-elses",
    )
    with pytest.raises(UsageError, match=message):
        record.find_vms(virt, names)  # type: ignore[arg-type]
