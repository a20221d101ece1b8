"""kvmctl.images: locating and verifying the test-guest artifacts, and the
kernel command line contract. Uses a temporary image directory only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kvmctl import images
from kvmctl.errors import HostError, UsageError

pytestmark = pytest.mark.unit

BASE = "console=tty0 console=ttyS0,115200n8 panic=1 quiet"


def make_image(root: Path, flavour: str = "test-guest", **overrides: object) -> Path:
    """A fake flavour directory; `overrides` replace manifest fields."""
    d = root / flavour
    d.mkdir(parents=True)
    arts = {}
    for name, data in (("vmlinuz", b"kernel bytes"), ("initrd.img", b"initrd bytes")):
        (d / name).write_bytes(data)
        arts[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest = {
        "format": 1,
        "flavour": flavour,
        "kernel_release": "6.1.0-test",
        "cmdline_base": BASE,
        "artifacts": arts,
        "packages": {"linux-image-test": "1"},
    }
    manifest.update(overrides)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture
def image_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KVMCTL_IMAGE_DIR", str(tmp_path))
    images._hash_cache.clear()
    return tmp_path


def test_image_dir_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KVMCTL_IMAGE_DIR", raising=False)
    assert images.image_dir() == Path("/var/lib/kvmctl/images")
    monkeypatch.setenv("KVMCTL_IMAGE_DIR", "/srv/img")
    assert images.image_dir() == Path("/srv/img")


def test_artifacts_found(image_root: Path) -> None:
    d = make_image(image_root)
    img = images.artifacts("test-guest")
    assert img.kernel == d / "vmlinuz"
    assert img.initrd == d / "initrd.img"
    assert img.cmdline_base == BASE
    assert img.kernel_release == "6.1.0-test"
    assert img.manifest["packages"] == {"linux-image-test": "1"}


def test_missing_flavour_names_remedy(image_root: Path) -> None:
    with pytest.raises(HostError) as exc:
        images.artifacts("test-guest-rt")
    assert str(exc.value) == "guest image 'test-guest-rt' is missing: run `make images`"
    assert exc.value.exit_code == 3
    assert "manifest.json" in exc.value.reasons[0]


def test_missing_artifact(image_root: Path) -> None:
    d = make_image(image_root)
    (d / "initrd.img").unlink()
    with pytest.raises(HostError, match=r"^guest image 'test-guest' is missing: run `make images`$"):
        images.artifacts("test-guest")


def test_corrupt_artifact_same_size(image_root: Path) -> None:
    d = make_image(image_root)
    (d / "vmlinuz").write_bytes(b"kernel bytez")  # same length, other content
    with pytest.raises(HostError) as exc:
        images.artifacts("test-guest")
    assert str(exc.value) == "guest image 'test-guest' is corrupt: run `make images`"
    assert "vmlinuz" in exc.value.reasons[0]


def test_corrupt_artifact_other_size(image_root: Path) -> None:
    d = make_image(image_root)
    (d / "initrd.img").write_bytes(b"short")
    with pytest.raises(HostError, match="is corrupt: run `make images`"):
        images.artifacts("test-guest")


@pytest.mark.parametrize(
    "text",
    ["{not json", json.dumps([1, 2]), json.dumps({"flavour": "test-guest"})],
)
def test_corrupt_manifest(image_root: Path, text: str) -> None:
    d = make_image(image_root)
    (d / "manifest.json").write_text(text)
    with pytest.raises(HostError, match="'test-guest' is corrupt: run `make images`"):
        images.artifacts("test-guest")


def test_boot_kernel_vmlinux(image_root: Path) -> None:
    d = make_image(image_root)
    manifest = json.loads((d / "manifest.json").read_text())
    (d / "vmlinux").write_bytes(b"\x7fELF...")
    manifest["artifacts"]["vmlinux"] = {
        "sha256": hashlib.sha256(b"\x7fELF...").hexdigest(), "size": 7
    }
    manifest["boot_kernel"] = "vmlinux"
    (d / "manifest.json").write_text(json.dumps(manifest))
    assert images.artifacts("test-guest").kernel == d / "vmlinux"
    (d / "vmlinux").unlink()
    with pytest.raises(HostError, match="is missing"):
        images.artifacts("test-guest")
    manifest["boot_kernel"] = "/etc/passwd"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HostError, match="is corrupt"):
        images.artifacts("test-guest")


def test_manifest_without_sha(image_root: Path) -> None:
    make_image(image_root, artifacts={"vmlinuz": {"size": 12}, "initrd.img": {"size": 12}})
    with pytest.raises(HostError, match="is corrupt"):
        images.artifacts("test-guest")


def test_manifest_of_other_flavour(image_root: Path) -> None:
    d = make_image(image_root)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["flavour"] = "test-guest-rt"
    (d / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HostError, match="is corrupt"):
        images.artifacts("test-guest")


def test_unknown_flavour_is_usage_error(image_root: Path) -> None:
    with pytest.raises(UsageError, match="unknown guest image 'windows'"):
        images.artifacts("windows")


def test_hash_checked_once_while_unchanged(image_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_image(image_root)
    images.artifacts("test-guest")
    calls: list[str] = []
    real = hashlib.sha256

    def counting(*args: object) -> object:
        calls.append("x")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(images.hashlib, "sha256", counting)
    images.artifacts("test-guest")
    assert calls == []
    # A rewrite changes mtime (forced here, in case the clock is coarse): hashed again.
    st = (d / "vmlinuz").stat()
    os.utime(d / "vmlinuz", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    images.artifacts("test-guest")
    assert calls == ["x"]


def test_kernel_cmdline_contract() -> None:
    line = images.kernel_cmdline(
        "cluster",
        [("52:54:00:AA:bb:01", "10.77.1.10/24"), ("52-54-00-aa-bb-02", "10.77.2.10/24")],
        {"kvmctl.wdt": "3", "kvmctl.softdog": "1", "nokaslr": None},
    )
    assert line == (
        "kvmctl.name=cluster "
        "kvmctl.ip=52:54:00:aa:bb:01,10.77.1.10/24 "
        "kvmctl.ip=52:54:00:aa:bb:02,10.77.2.10/24 "
        "kvmctl.wdt=3 kvmctl.softdog=1 nokaslr"
    )


def test_kernel_cmdline_ipv6_and_no_nics() -> None:
    assert images.kernel_cmdline("hud", [], {}) == "kvmctl.name=hud"
    line = images.kernel_cmdline("hud", [("52:54:00:00:00:01", "fd00::5/64")], {})
    assert line.endswith("kvmctl.ip=52:54:00:00:00:01,fd00::5/64")


@pytest.mark.parametrize(
    ("name", "nics", "extra", "culprit"),
    [
        ("bad name", [], {}, "guest name 'bad name'"),
        ("", [], {}, "guest name ''"),
        ("x" * 64, [], {}, "guest name"),
        ("vm", [("52:54:00:00:00", "10.0.0.1/24")], {}, "is not a MAC"),
        ("vm", [("52:54:00:00:00:01", "10.0.0.300/24")], {}, "is not an address"),
        ("vm", [("52:54:00:00:00:01", "10.0.0.1")], {}, "has no prefix"),
        ("vm", [], {"bad key": "1"}, "parameter name"),
        ("vm", [], {"kvmctl.wdt": "3 init=/bin/sh"}, "cannot carry"),
        ("vm", [], {"kvmctl.x": '"quoted"'}, "cannot carry"),
    ],
)
def test_kernel_cmdline_rejects(
    name: str, nics: list[tuple[str, str]], extra: dict[str, str | None], culprit: str
) -> None:
    with pytest.raises(UsageError, match=culprit):
        images.kernel_cmdline(name, nics, extra)


def test_full_cmdline_and_length_limit(image_root: Path) -> None:
    make_image(image_root)
    img = images.artifacts("test-guest")
    assert img.cmdline("vm", [], {"kvmctl.probe": "1"}) == f"{BASE} kvmctl.name=vm kvmctl.probe=1"
    with pytest.raises(UsageError, match="the kernel keeps only 2047"):
        img.cmdline("vm", [], {f"k{i}": "v" * 40 for i in range(60)})
