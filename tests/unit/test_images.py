"""kvmctl.host.images: locating and verifying the test-guest artifacts, and the
kernel command line contract. Uses a temporary image directory only."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kvmctl.errors import HostError, UsageError
from kvmctl.host import images

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
    with pytest.raises(
        HostError, match=r"^guest image 'test-guest' is missing: run `make images`$"
    ):
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
        "sha256": hashlib.sha256(b"\x7fELF...").hexdigest(),
        "size": 7,
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


def test_hash_checked_once_while_unchanged(
    image_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
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


def make_disk_image(root: Path, **overrides: object) -> Path:
    """A fake debian-12 directory (the manifest shape guest-images/disk_image.py writes)."""
    d = root / "debian-12"
    d.mkdir(parents=True)
    data = b"QFI\xfb qcow2 bytes"
    (d / "disk.qcow2").write_bytes(data)
    manifest = {
        "format": 1,
        "flavour": "debian-12",
        "boot": "disk",
        "disk": "disk.qcow2",
        "disk_format": "qcow2",
        "virtual_size": 1024**3,
        "kernel_release": "6.1.0-test-cloud-amd64",
        "artifacts": {
            "disk.qcow2": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        },
        "packages": {"cloud-init": "22.4"},
    }
    manifest.update(overrides)
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def test_disk_image_found(image_root: Path) -> None:
    d = make_disk_image(image_root)
    img = images.disk_image("debian-12")
    assert img.path == d / "disk.qcow2"
    assert img.virtual_size == 1024**3
    assert img.manifest["packages"] == {"cloud-init": "22.4"}


def test_disk_image_missing_and_corrupt(image_root: Path) -> None:
    with pytest.raises(HostError, match=r"^guest image 'debian-12' is missing: run `make images`$"):
        images.disk_image("debian-12")
    d = make_disk_image(image_root)
    (d / "disk.qcow2").write_bytes(b"QFI\xfb qcow2 bytez")
    with pytest.raises(HostError, match="'debian-12' is corrupt") as exc:
        images.disk_image("debian-12")
    assert "disk.qcow2" in exc.value.reasons[0]


@pytest.mark.parametrize(
    "overrides",
    [
        {"disk": "../test-guest/vmlinuz"},
        {"disk": None},
        {"virtual_size": "1G"},
        {"virtual_size": 0},
    ],
)
def test_disk_image_odd_manifest(image_root: Path, overrides: dict[str, object]) -> None:
    make_disk_image(image_root, **overrides)
    with pytest.raises(HostError, match="is corrupt"):
        images.disk_image("debian-12")


def test_flavour_kinds_do_not_mix(image_root: Path) -> None:
    make_disk_image(image_root)
    with pytest.raises(UsageError, match="unknown guest image 'debian-12'"):
        images.artifacts("debian-12")
    with pytest.raises(UsageError, match="unknown guest image 'test-guest'"):
        images.disk_image("test-guest")


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


# --------------------------------------------------------------------------- build.py
# The image builder is a stdlib script outside the package; its pure parts are
# tested here on synthetic inputs (no packages, no network).

import gzip  # noqa: E402
import importlib.util  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
from types import ModuleType  # noqa: E402

BUILD_PY = Path(__file__).resolve().parents[2] / "guest-images" / "build.py"


@pytest.fixture(scope="module")
def build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kvmctl_guest_image_build", BUILD_PY)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    # build.py imports its sibling modules, as when it runs as a script.
    sys.path.insert(0, str(BUILD_PY.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BUILD_PY.parent))
    return mod


@pytest.fixture(scope="module")
def disk(build: ModuleType) -> ModuleType:
    return sys.modules["disk_image"]


def test_mbr_partition_entry_and_boot_code(disk: ModuleType) -> None:
    boot_img = bytes(range(256)) * 2
    mbr = disk.boot_sector(boot_img, 0x12345678, 2048, 2095104)
    assert len(mbr) == 512 and mbr[510:] == b"\x55\xaa"
    assert mbr[:0x5C] == boot_img[:0x5C]  # GRUB's code, up to the core-image sector
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 1  # core image at sector 1
    assert mbr[0x64:440] == boot_img[0x64:440]
    assert struct.unpack_from("<I", mbr, 440)[0] == 0x12345678
    status, chs_start, ptype, chs_end, start, count = struct.unpack_from("<B3sB3sII", mbr, 446)
    assert (status, ptype, start, count) == (0x80, 0x83, 2048, 2095104)
    # LBA 2048 with 255 heads, 63 sectors: cylinder 0, head 32, sector 33.
    assert chs_start == bytes([32, 33, 0])
    assert mbr[462:510] == bytes(48)  # the other three entries empty
    assert disk.chs(1024 * 255 * 63) == b"\xfe\xff\xff"


def test_grub_cfg_boots_root_by_uuid(disk: ModuleType) -> None:
    cfg = disk.grub_cfg("0f0f-uuid", "6.1.0-9-cloud-amd64")
    assert "linux /boot/vmlinuz-6.1.0-9-cloud-amd64 root=UUID=0f0f-uuid ro " in cfg
    assert "console=ttyS0,115200n8" in cfg and "set timeout=0" in cfg
    assert "initrd /boot/initrd.img-6.1.0-9-cloud-amd64" in cfg


def test_disk_build_key_follows_package_versions(disk: ModuleType) -> None:
    flavour = disk.DISK_FLAVOURS["debian-12"]
    tools = {"mmdebstrap": "1.3.5-7"}
    key = disk.build_key(flavour, {"cloud-init": "22.4.2-1", "systemd": "252.39"}, tools)
    assert key == disk.build_key(flavour, {"systemd": "252.39", "cloud-init": "22.4.2-1"}, tools)
    assert key != disk.build_key(flavour, {"cloud-init": "22.4.2-2", "systemd": "252.39"}, tools)
    assert key != disk.build_key(
        flavour, {"cloud-init": "22.4.2-1", "systemd": "252.39"}, {"mmdebstrap": "1.3.6"}
    )


def parse_newc(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdevmajor, rdevminor), checking alignment as the kernel does."""
    out = {}
    pos = 0
    while True:
        assert data[pos : pos + 6] == b"070701", f"bad magic at {pos}"
        fields = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmaj, rmin, namesize = (
            fields[1],
            fields[6],
            fields[9],
            fields[10],
            fields[11],
        )
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize
        body += -body % 4
        content = data[body : body + filesize]
        pos = body + filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, content, rmaj, rmin)


def test_initramfs_newc_and_merged_usr(build: ModuleType, tmp_path: Path) -> None:
    img = build.Initramfs(mtime=0)
    img.raw_symlink("bin", "usr/bin")
    img.file("/bin/tool", b"#!/bin/sh\n", 0o755)
    img.file("etc/odd-size", b"12345")
    img.symlink("sbin/mkfs.ext4", "mke2fs")
    img.chardev("dev/console", 5, 1)
    img.dir("tmp", 0o1777)
    first = tmp_path / "a.img"
    img.write_gzip(first)
    entries = parse_newc(gzip.decompress(first.read_bytes()))

    assert entries["bin"][1] == b"usr/bin" and stat.S_ISLNK(entries["bin"][0])
    assert entries["usr/bin/tool"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\n", 0, 0)
    assert entries["etc/odd-size"][1] == b"12345"
    assert entries["usr/sbin/mkfs.ext4"][1] == b"mke2fs"
    assert entries["dev/console"] == (stat.S_IFCHR | 0o600, b"", 5, 1)
    assert entries["tmp"][0] == stat.S_IFDIR | 0o1777
    assert stat.S_ISDIR(entries["usr/sbin"][0])  # parents are created
    # Reproducible: same input, same bytes.
    second = tmp_path / "b.img"
    img.write_gzip(second)
    assert first.read_bytes() == second.read_bytes()


def fake_elf_with_notes(notes: list[tuple[bytes, int]]) -> bytes:
    """An ELF64 with one PT_NOTE segment holding (name, type) notes."""
    blob = b""
    for name, ntype in notes:
        desc = b"\0" * 8
        padded = name + b"\0" * (-len(name) % 4)
        blob += struct.pack("<III", len(name), len(desc), ntype) + padded + desc
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(blob), len(blob), 4)
    return bytes(header) + phdr + blob


def test_pvh_note_detection(build: ModuleType) -> None:
    assert build.has_pvh_entry(fake_elf_with_notes([(b"GNU\0", 3), (b"Xen\0", 18)]))
    assert not build.has_pvh_entry(fake_elf_with_notes([(b"Xen\0", 17)]))
    assert not build.has_pvh_entry(b"MZ not an elf")


def fake_ko(info: list[tuple[str, str]]) -> bytes:
    """A minimal ELF64 relocatable with a .modinfo section."""
    modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, v in info)
    shstr = b"\0.modinfo\0.shstrtab\0"
    off_mi = 64
    off_ss = off_mi + len(modinfo)
    shoff = off_ss + len(shstr)
    shoff += -shoff % 8
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, shoff)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 2)
    body = bytes(header) + modinfo + shstr
    body += b"\0" * (shoff - len(body))
    sections = b"\0" * 64
    sections += struct.pack("<IIQQQQIIQQ", 1, 1, 0, 0, off_mi, len(modinfo), 0, 0, 1, 0)
    sections += struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, off_ss, len(shstr), 0, 0, 1, 0)
    return body + sections


def test_module_order_from_modules_dep(build: ModuleType, tmp_path: Path) -> None:
    kver = "6.1.0-test"
    moddir = tmp_path / "lib" / "modules" / kver
    files = {
        "kernel/virtio/virtio_ring.ko": [],
        "kernel/virtio/virtio.ko": ["kernel/virtio/virtio_ring.ko"],
        "kernel/virtio/virtio_pci.ko": ["kernel/virtio/virtio.ko", "kernel/virtio/virtio_ring.ko"],
        "kernel/char/virtio-rng.ko": ["kernel/virtio/virtio.ko", "kernel/virtio/virtio_ring.ko"],
        "kernel/fs/jbd2.ko": [],
        "kernel/fs/ext4.ko": ["kernel/fs/jbd2.ko"],
        "kernel/crypto/crc32c_generic.ko": [],
    }
    dep_lines = []
    for rel, deps in files.items():
        info = [("depends", ",".join(Path(d).stem for d in deps))]
        if rel.endswith("ext4.ko"):
            info.append(("softdep", "pre: crc32c"))
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(fake_ko(info))
        dep_lines.append(f"{rel}: {' '.join(deps)}".rstrip())
    (moddir / "modules.dep").write_text("\n".join(dep_lines) + "\n")
    (moddir / "modules.builtin").write_text("kernel/drivers/tty/serial/8250.ko\n")
    (moddir / "modules.alias").write_text("alias crc32c crc32c_generic\n")

    flavour = build.Flavour("t", "meta", ["virtio_pci", "virtio_rng", "ext4", "8250"])
    mods = build.resolve_modules(tmp_path, flavour, Path("/nonexistent/busybox"))
    names = [Path(m).stem for m in mods.order]
    assert names == [
        "virtio_ring",
        "virtio",
        "virtio_pci",
        "virtio-rng",
        "crc32c_generic",
        "jbd2",
        "ext4",
    ]
    assert mods.builtin == ["8250"]
    assert "kernel/crypto/crc32c_generic.ko" in mods.optional

    with pytest.raises(build.BuildError, match="no module nosuch"):
        build.resolve_modules(tmp_path, build.Flavour("t", "meta", ["nosuch"]), Path("/x"))
