#!/usr/bin/env python3
"""Build the kvmctl guest images from Debian packages, offline.

Two test-guest flavours, each a kernel plus a busybox initramfs:

  test-guest     linux-image-cloud-amd64 (fastest boot; softdog, no hw watchdog driver)
  test-guest-rt  linux-image-rt-amd64    (PREEMPT_RT; i6300esb watchdog driver)

and one disk image that boots on its own, built by disk_image.py:

  debian-12      Debian 12 with systemd, cloud-init, the guest agent, the cloud kernel

Output (see README.md): $KVMCTL_IMAGE_DIR/<flavour>/{vmlinuz,initrd.img,manifest.json},
default root /var/lib/kvmctl/images. Downloads and extracted packages are kept in
$KVMCTL_IMAGE_CACHE (default /var/cache/kvmctl/guest-images), keyed by package
version, so a second run with nothing changed only re-checks versions and exits.

Only the standard library is used, so this runs on a bare host before the
project's virtualenv exists.
"""

from __future__ import annotations

import argparse
import bz2
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from disk_image import DISK_FLAVOURS, build_flavour
from imagelib import (
    MANIFEST_FORMAT,
    BuildError,
    artifact_entries,
    file_sha256,
    host_version,
    log,
    publish,
    run,
    up_to_date,
)

HERE = Path(__file__).resolve().parent
ROOTFS_SRC = HERE / "rootfs"

DEFAULT_IMAGE_DIR = Path("/var/lib/kvmctl/images")
DEFAULT_CACHE_DIR = Path("/var/cache/kvmctl/guest-images")

# The serial console is last so /dev/console (the init's stdout) is ttyS0; tty0
# still gets kernel messages so the display is never blank while booting.
CMDLINE_BASE = "console=tty0 console=ttyS0,115200n8 panic=1 quiet"

# Everything the guest needs beyond the kernel image: device drivers for the
# devices the test domain XML gives it. Dependencies are not listed here; they
# come from modules.dep (and softdep from each module's .modinfo).
COMMON_MODULES = [
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_console",
    "virtio_balloon",
    "virtio_rng",
    "softdog",
    "ext4",
    "button",
    "evdev",
    # <panic model='isa'/>: QEMU's pvpanic ISA device, which ACPI announces as
    # QEMU0001 and pvpanic-mmio drives. Without it a panic only shows as the
    # reset that panic=1 makes, and the host cannot tell it from a reboot.
    "pvpanic_mmio",
]


@dataclass(frozen=True)
class Flavour:
    name: str
    kernel_meta: str
    modules: list[str]
    # Loaded at boot; the rest are only shipped (softdog is loaded on request).
    boot_skip: frozenset[str] = frozenset({"softdog"})
    # Boot the uncompressed vmlinux through its PVH entry when the kernel allows.
    pvh: bool = True


FLAVOURS: dict[str, Flavour] = {
    "test-guest": Flavour("test-guest", "linux-image-cloud-amd64", COMMON_MODULES),
    # bochs: a PVH boot leaves the kernel no VGA text console, so the display
    # (the guest's name, in big letters) comes through DRM + fbcon instead.
    "test-guest-rt": Flavour(
        "test-guest-rt", "linux-image-rt-amd64", [*COMMON_MODULES, "i6300esb", "bochs"]
    ),
}

# Downloaded with apt-get (libc-only or static, so the host need not have them;
# rt-tests' cyclictest also needs libnuma, which QEMU's own dependencies install).
DOWNLOADED_USERLAND = ["busybox-static", "netcat-traditional", "rt-tests"]
# Taken from the host's installed packages, with their shared libraries (ldd).
HOST_USERLAND = {
    "qemu-guest-agent": ["/usr/sbin/qemu-ga"],
    "e2fsprogs": ["/usr/sbin/mke2fs"],
}
HOST_FILES = [
    "/etc/mke2fs.conf",
    # glibc dlopens it (not in ldd's list) when a thread is cancelled or exits.
    "/lib/x86_64-linux-gnu/libgcc_s.so.1",
]


# --------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def deb_name(self) -> str:
        # apt-get download names files with the epoch's colon escaped as %3a.
        return f"{self.name}_{self.version.replace(':', '%3a')}_amd64.deb"


APT_LISTS = Path("/var/lib/apt/lists")


def _apt_lists_stamp() -> list[tuple[str, int, int]]:
    try:
        return sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns)
            for p in APT_LISTS.iterdir()
            if p.name.endswith("Packages") or p.name.endswith("Release")
        )
    except OSError:
        return []


def apt_candidates(names: list[str], memo: Path | None = None) -> dict[str, tuple[str, str]]:
    """Candidate version and Depends of each package, from the local apt lists.

    apt-cache takes most of a second here (no pkgcache.bin), so the answer is
    remembered in `memo` until the apt lists change (apt-get update).
    """
    stamp = [sorted(names), _apt_lists_stamp()]
    if memo is not None:
        try:
            saved = json.loads(memo.read_text())
            if saved.get("stamp") == json.loads(json.dumps(stamp)) and saved.get("found"):
                return {k: (v[0], v[1]) for k, v in saved["found"].items()}
        except (OSError, ValueError, AttributeError):
            pass
    env = dict(os.environ, LC_ALL="C")
    try:
        out = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", *names],
            check=False, capture_output=True, text=True, env=env,
        ).stdout
    except FileNotFoundError:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for stanza in out.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(": ")
            if sep and not line.startswith(" "):
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields:
            found.setdefault(fields["Package"], (fields["Version"], fields.get("Depends", "")))
    if memo is not None and found:
        memo.write_text(json.dumps({"stamp": stamp, "found": found}))
    return found


class Cache:
    def __init__(self, root: Path):
        self.root = root
        self.debs = root / "debs"
        self.trees = root / "trees"
        for d in (self.debs, self.trees):
            d.mkdir(parents=True, exist_ok=True)

    def cached_version(self, name: str) -> str | None:
        """Newest extracted version of a package, for hosts whose apt lists are gone."""
        best: tuple[float, str] | None = None
        for tree in self.trees.glob(f"{name}_*"):
            marker = tree / ".complete"
            if marker.exists():
                version = marker.read_text().strip()
                stamp = marker.stat().st_mtime
                if best is None or stamp > best[0]:
                    best = (stamp, version)
        return best[1] if best else None

    def tree(self, pkg: Package) -> Path:
        return self.trees / f"{pkg.name}_{pkg.version.replace(':', '%3a')}"

    def ensure(self, pkgs: list[Package]) -> dict[Package, Path]:
        """Extracted tree of each package, downloading what is not cached yet."""
        missing = [p for p in pkgs if not (self.tree(p) / ".complete").exists()]
        need_download = [p for p in missing if not (self.debs / p.deb_name).exists()]
        if need_download:
            log("downloading " + ", ".join(f"{p.name}={p.version}" for p in need_download))
            run(
                ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download",
                 *(f"{p.name}={p.version}" for p in need_download)],
                cwd=self.debs,
            )
        for pkg in missing:
            deb = self.debs / pkg.deb_name
            if not deb.exists():
                raise BuildError(f"apt-get download did not produce {deb.name}")
            tree = self.tree(pkg)
            if tree.exists():
                shutil.rmtree(tree)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=self.trees))
            log(f"extracting {deb.name}")
            run(["dpkg-deb", "-x", str(deb), str(tmp)])
            (tmp / ".complete").write_text(pkg.version + "\n")
            tmp.rename(tree)
        return {p: self.tree(p) for p in pkgs}

    def prune(self, keep: Iterable[Package]) -> None:
        """Drop downloads and trees of versions no build uses any more."""
        keep_debs = {p.deb_name for p in keep}
        keep_trees = {self.tree(p).name for p in keep}
        for deb in self.debs.glob("*.deb"):
            if deb.name not in keep_debs:
                deb.unlink()
        for tree in self.trees.iterdir():
            if tree.name not in keep_trees:
                shutil.rmtree(tree, ignore_errors=True)


def resolve_packages(cache: Cache) -> tuple[dict[str, Package], dict[str, Package], dict[str, str]]:
    """(kernel package per flavour, downloaded userland, host package versions)."""
    metas = sorted({f.kernel_meta for f in FLAVOURS.values()})
    cand = apt_candidates(metas + DOWNLOADED_USERLAND, cache.root / "apt-candidates.json")
    kernels: dict[str, Package] = {}
    for flavour in FLAVOURS.values():
        meta = cand.get(flavour.kernel_meta)
        if meta is None:
            raise BuildError(
                f"apt knows no {flavour.kernel_meta}: run `apt-get update` "
                "(Debian 12 bookworm main)"
            )
        dep = meta[1].split(",")[0].split("|")[0].strip()
        m = re.fullmatch(r"([a-z0-9.+-]+)(?: \(= ([^)]+)\))?", dep)
        if not m or not m.group(1).startswith("linux-image-"):
            raise BuildError(f"unexpected Depends of {flavour.kernel_meta}: {meta[1]!r}")
        image_pkg = m.group(1)
        version = m.group(2) or meta[0]
        kernels[flavour.name] = Package(image_pkg, version)
    userland: dict[str, Package] = {}
    for name in DOWNLOADED_USERLAND:
        if name in cand:
            userland[name] = Package(name, cand[name][0])
        elif (cached := cache.cached_version(name)) is not None:
            userland[name] = Package(name, cached)
        else:
            raise BuildError(f"apt knows no {name}: run `apt-get update`")
    host: dict[str, str] = {}
    missing = []
    for pkg in HOST_USERLAND:
        version = host_version(pkg)
        if version is None:
            missing.append(pkg)
        else:
            host[pkg] = version
    if missing:
        raise BuildError(
            "host packages missing: " + " ".join(missing)
            + f" (apt-get install {' '.join(missing)})"
        )
    return kernels, userland, host


# --------------------------------------------------------------------------- modules


def modinfo(path: Path) -> dict[str, list[str]]:
    """Key/values of a kernel module's .modinfo section (ELF64 little endian)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path} is not an ELF64 LE kernel module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _typ, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    info: dict[str, list[str]] = {}
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off:end] == b".modinfo":
            for item in data[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(key, []).append(value)
    return info


def norm(name: str) -> str:
    return name.replace("-", "_")


@dataclass
class ModuleSet:
    kver: str
    moddir: Path
    order: list[str] = field(default_factory=list)  # paths relative to moddir, load order
    builtin: list[str] = field(default_factory=list)
    optional: set[str] = field(default_factory=set)  # may fail to load (alternatives)


def resolve_modules(tree: Path, flavour: Flavour, busybox: Path) -> ModuleSet:
    moddirs = sorted((tree / "lib/modules").iterdir())
    if len(moddirs) != 1:
        raise BuildError(f"expected one kernel in {tree}, found {len(moddirs)}")
    moddir = moddirs[0]
    kver = moddir.name
    if not (moddir / "modules.dep").exists():
        # Debian generates modules.dep at install time; the .deb does not ship it.
        log(f"depmod {kver}")
        run([str(busybox), "depmod", "-b", str(tree), kver])

    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[mod] = rest.split()
        by_name[norm(Path(mod).name.split(".ko")[0])] = mod
    builtin = {
        norm(Path(line.strip()).name.split(".ko")[0])
        for line in (moddir / "modules.builtin").read_text().splitlines()
        if line.strip()
    }
    aliases: dict[str, list[str]] = {}
    alias_file = moddir / "modules.alias"
    if alias_file.exists():
        for line in alias_file.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                aliases.setdefault(parts[1], []).append(norm(parts[2]))

    result = ModuleSet(kver=kver, moddir=moddir)
    seen: set[str] = set()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        if mod in seen:
            return
        if mod in stack:
            raise BuildError(f"module dependency cycle: {' -> '.join((*stack, mod))}")
        info = modinfo(moddir / mod)
        # softdep "pre:" modules (ext4 wants crc32c) are loaded first; they are
        # named by alias and may have several providers, some of which refuse
        # this CPU (crc32c_intel without SSE4.2), so each is optional.
        for soft in info.get("softdep", []):
            words = soft.split()
            if words[:1] == ["pre:"]:
                for target in words[1:]:
                    for cand in aliases.get(target, []) or [norm(target)]:
                        if cand in by_name and cand not in builtin:
                            result.optional.add(by_name[cand])
                            visit(by_name[cand], (*stack, mod))
        # modules.dep lists the whole closure; load each dependency after its own.
        for dep in deps.get(mod, []):
            visit(dep, (*stack, mod))
        seen.add(mod)
        result.order.append(mod)

    for wanted in flavour.modules:
        key = norm(wanted)
        if key in builtin:
            result.builtin.append(key)
        elif key in by_name:
            visit(by_name[key], ())
        else:
            raise BuildError(f"kernel {kver} has no module {wanted} (neither built in nor .ko)")
    return result


# --------------------------------------------------------------------------- kernel


XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(elf: bytes) -> bool:
    """True when an ELF64 vmlinux carries the PVH entry note QEMU boots it by."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _flags, offset, _va, _pa, filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz]
            if name == b"Xen\0" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def pvh_vmlinux(bzimage: Path) -> bytes | None:
    """The uncompressed vmlinux inside a bzImage, if it can be booted via PVH.

    Debian's RT kernel is xz-compressed; under TCG its decompressor runs for
    seconds before the kernel starts. QEMU boots the ELF directly through the
    PVH entry point instead, skipping the decompressor and the real-mode setup.
    Only what the standard library can decompress is handled (not lz4/zstd,
    whose decompressors are fast anyway).
    """
    data = bzimage.read_bytes()
    if data[0x202:0x206] != b"HdrS":
        return None
    setup_sects = data[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", data, 0x248)
    payload = data[start + offset:start + offset + length]
    out: bytes
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            out = zlib.decompressobj(wbits=31).decompress(payload)
        elif payload.startswith(b"BZh"):
            out = bz2.BZ2Decompressor().decompress(payload)
        elif payload.startswith(b"\x5d\x00\x00"):
            out = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
        else:
            return None
    except (lzma.LZMAError, zlib.error, OSError, EOFError):
        return None
    return out if has_pvh_entry(out) else None


# --------------------------------------------------------------------------- cpio


class Initramfs:
    """An in-memory newc cpio archive: deterministic (fixed owners and mtime)."""

    def __init__(self, mtime: int):
        self.mtime = mtime
        self.entries: dict[str, tuple[int, bytes, int, int]] = {}  # path -> mode, data, rdev

    @staticmethod
    def _clean(path: str) -> str:
        path = path.strip("/")
        # Merged /usr, as on the host: /lib, /bin, /sbin are links into /usr.
        for top in ("bin", "sbin", "lib", "lib64"):
            if path == top or path.startswith(top + "/"):
                return "usr/" + path
        return path

    def _parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.entries[d] = (stat.S_IFDIR | 0o755, b"", 0, 0)

    def dir(self, path: str, mode: int = 0o755) -> None:
        path = self._clean(path)
        self._parents(path)
        self.entries[path] = (stat.S_IFDIR | mode, b"", 0, 0)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = self._clean(path)
        self._parents(path)
        self.entries[path] = (stat.S_IFREG | mode, data, 0, 0)

    def symlink(self, path: str, target: str) -> None:
        path = self._clean(path)
        self._parents(path)
        self.entries[path] = (stat.S_IFLNK | 0o777, target.encode(), 0, 0)

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = self._clean(path)
        self._parents(path)
        self.entries[path] = (stat.S_IFCHR | mode, b"", major, minor)

    def raw_symlink(self, path: str, target: str) -> None:
        """A link at exactly this path (for the merged-/usr links themselves)."""
        self.entries[path] = (stat.S_IFLNK | 0o777, target.encode(), 0, 0)

    def has(self, path: str) -> bool:
        return self._clean(path) in self.entries

    def _records(self) -> Iterator[bytes]:
        ino = 1
        for path in sorted(self.entries):
            mode, data, major, minor = self.entries[path]
            yield self._record(path, mode, data, ino, major, minor)
            ino += 1
        yield self._record("TRAILER!!!", 0, b"", 0, 0, 0)

    def _record(self, name: str, mode: int, data: bytes, ino: int, rmaj: int, rmin: int) -> bytes:
        nlink = 2 if stat.S_ISDIR(mode) else 1
        raw_name = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, nlink, self.mtime, len(data), 0, 0, rmaj, rmin,
                  len(raw_name), 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        out = header + raw_name
        out += b"\0" * (-len(out) % 4)
        out += data
        out += b"\0" * (-len(out) % 4)
        return out

    def write_gzip(self, dest: Path) -> None:
        with open(dest, "wb") as raw:
            # No name and mtime=0 in the gzip header: the output is reproducible.
            with gzip.GzipFile(
                filename="", fileobj=raw, mode="wb", compresslevel=6, mtime=0
            ) as gz:
                buf = io.BufferedWriter(gz, buffer_size=1 << 20)  # type: ignore[arg-type]
                for rec in self._records():
                    buf.write(rec)
                buf.flush()


def ldd(binary: Path) -> list[Path]:
    """Shared libraries the dynamic loader maps for a binary, loader included."""
    out = run(["ldd", str(binary)], env=dict(os.environ, LC_ALL="C"))
    libs: list[Path] = []
    for line in out.splitlines():
        line = line.strip()
        if "not found" in line:
            raise BuildError(f"{binary}: {line}")
        m = re.match(r"\S+ => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    if not libs and "statically linked" not in out and "not a dynamic" not in out:
        raise BuildError(f"ldd gave no libraries for {binary}")
    return libs


# --------------------------------------------------------------------------- build


def source_files() -> list[Path]:
    files = [Path(__file__).resolve(), HERE / "imagelib.py"]
    files += sorted(p for p in ROOTFS_SRC.rglob("*") if p.is_file() or p.is_symlink())
    return files


def build_key(flavour: Flavour, kernel: Package, userland: dict[str, Package],
              host: dict[str, str], host_files: list[Path]) -> str:
    h = hashlib.sha256()
    parts = {
        "format": MANIFEST_FORMAT,
        "flavour": flavour.name,
        "modules": flavour.modules,
        "cmdline": CMDLINE_BASE,
        "pvh": flavour.pvh,
        "kernel": [kernel.name, kernel.version],
        "userland": sorted((p.name, p.version) for p in userland.values()),
        "host": sorted(host.items()),
        # Libraries can change under an unchanged package version of their user.
        "host_files": sorted(
            (str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in host_files
        ),
        "sources": [
            (str(p.relative_to(HERE)), file_sha256(p) if p.is_file() else os.readlink(p))
            for p in source_files()
        ],
    }
    h.update(json.dumps(parts, sort_keys=True).encode())
    return h.hexdigest()


def host_closure() -> list[Path]:
    """Host binaries, their libraries and plain files copied into the initramfs."""
    out: list[Path] = []
    for binaries in HOST_USERLAND.values():
        for b in binaries:
            p = Path(b)
            out.append(p)
            out += ldd(p)
    out += [Path(f) for f in HOST_FILES if Path(f).exists()]
    seen: set[Path] = set()
    uniq = []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    return uniq


def add_rootfs(img: Initramfs) -> None:
    for src in sorted(ROOTFS_SRC.rglob("*")):
        rel = str(src.relative_to(ROOTFS_SRC))
        if src.is_symlink():
            img.symlink(rel, os.readlink(src))
        elif src.is_dir():
            img.dir(rel)
        else:
            mode = 0o755 if src.stat().st_mode & 0o111 else 0o644
            img.file(rel, src.read_bytes(), mode)


def add_with_libs(img: Initramfs, binary: Path, dest: str) -> None:
    img.file(dest, binary.read_bytes(), 0o755)
    for lib in ldd(binary):
        if not img.has(str(lib)):
            img.file(str(lib), lib.resolve().read_bytes(), 0o755)


def assemble(flavour: Flavour, kernel_tree: Path, trees: dict[str, Path],
             mods: ModuleSet, mtime: int) -> Initramfs:
    img = Initramfs(mtime)
    for top in ("bin", "sbin", "lib", "lib64"):
        img.raw_symlink(top, f"usr/{top}")
    for d in ("dev", "proc", "sys", "run", "tmp", "data", "root", "etc", "var",
              "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "mnt"):
        img.dir(d)
    img.dir("tmp", 0o1777)
    img.raw_symlink("var/run", "../run")
    img.raw_symlink("var/log", "../run/log")
    # The kernel opens /dev/console for init before anything is mounted, and the
    # probe path writes to ttyS0 before devtmpfs is up.
    img.chardev("dev/console", 5, 1)
    img.chardev("dev/ttyS0", 4, 64)
    img.chardev("dev/tty1", 4, 1)
    img.chardev("dev/null", 1, 3, 0o666)

    busybox = trees["busybox-static"] / "bin/busybox"
    img.file("usr/bin/busybox", busybox.read_bytes(), 0o755)
    applets = run([str(busybox), "--list-full"]).split()
    for applet in applets:
        if applet.endswith("/busybox"):
            continue
        img.symlink(applet, "/usr/bin/busybox")

    nc = trees["netcat-traditional"] / "bin/nc.traditional"
    add_with_libs(img, nc, "usr/bin/nc.traditional")
    # The timer-latency probe behind `kvmctl-tool jitter`.
    cyclictest = trees["rt-tests"] / "usr/bin/cyclictest"
    add_with_libs(img, cyclictest, "usr/bin/cyclictest")
    for binaries in HOST_USERLAND.values():
        for b in binaries:
            add_with_libs(img, Path(b), b)
    img.symlink("usr/sbin/mkfs.ext4", "mke2fs")
    for f in HOST_FILES:
        if Path(f).exists():
            mode = 0o755 if ".so" in f else 0o644
            img.file(f, Path(f).resolve().read_bytes(), mode)

    add_rootfs(img)  # after the applets, so the project's own scripts win

    load_list = []
    for rel in mods.order:
        img.file(f"lib/modules/{mods.kver}/{rel}", (mods.moddir / rel).read_bytes())
        name = norm(Path(rel).name.split(".ko")[0])
        if name in flavour.boot_skip:
            continue
        flag = "optional" if rel in mods.optional else "required"
        load_list.append(f"/lib/modules/{mods.kver}/{rel} {flag}")
    # A trimmed modules.dep so busybox modprobe works inside the guest.
    shipped = set(mods.order)
    dep_lines = []
    for line in (mods.moddir / "modules.dep").read_text().splitlines():
        mod = line.partition(":")[0]
        if mod in shipped:
            dep_lines.append(line)
    img.file(f"lib/modules/{mods.kver}/modules.dep", ("\n".join(dep_lines) + "\n").encode())
    for extra in ("modules.builtin", "modules.order"):
        if (mods.moddir / extra).exists():
            img.file(f"lib/modules/{mods.kver}/{extra}", (mods.moddir / extra).read_bytes())
    img.file("etc/kvmctl/modules", ("\n".join(load_list) + "\n").encode())
    img.file(
        "etc/kvmctl/image",
        f"flavour={flavour.name}\nkernel={mods.kver}\n".encode(),
    )
    return img


def write_flavour(out_dir: Path, flavour: Flavour, kernel: Package, userland: dict[str, Package],
                  host: dict[str, str], trees: dict[str, Path], key: str, started: float) -> dict:
    kernel_tree = trees[kernel.name]
    busybox = trees["busybox-static"] / "bin/busybox"
    mods = resolve_modules(kernel_tree, flavour, busybox)
    vmlinuz = kernel_tree / "boot" / f"vmlinuz-{mods.kver}"
    if not vmlinuz.exists():
        raise BuildError(f"{kernel.name} has no {vmlinuz.name}")
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    img = assemble(flavour, kernel_tree, trees, mods, epoch)

    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        shutil.copyfile(vmlinuz, tmp / "vmlinuz")
        names = ["vmlinuz", "initrd.img"]
        boot_kernel = "vmlinuz"
        elf = pvh_vmlinux(vmlinuz) if flavour.pvh else None
        if elf is not None:
            (tmp / "vmlinux").write_bytes(elf)
            names.append("vmlinux")
            boot_kernel = "vmlinux"
        img.write_gzip(tmp / "initrd.img")
        artifacts = artifact_entries(tmp, names)
        manifest = {
            "format": MANIFEST_FORMAT,
            "flavour": flavour.name,
            "kernel_release": mods.kver,
            "cmdline_base": CMDLINE_BASE,
            "boot_kernel": boot_kernel,
            "artifacts": artifacts,
            "packages": {
                kernel.name: kernel.version,
                **{p.name: p.version for p in userland.values()},
                **host,
            },
            "modules": {
                "load_order": [norm(Path(m).name.split(".ko")[0]) for m in mods.order],
                "builtin": mods.builtin,
            },
            "build_key": key,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": None,
        }
        publish(out_dir, tmp, names, manifest, started, stale=("vmlinux",))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    every = [*FLAVOURS, *DISK_FLAVOURS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("flavours", nargs="*", metavar="FLAVOUR",
                        help=f"what to build (default: all of {', '.join(every)})")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    wanted = args.flavours or every
    unknown = [f for f in wanted if f not in every]
    if unknown:
        parser.error(f"unknown flavour {unknown[0]!r}: choose from {', '.join(every)}")

    image_root = Path(os.environ.get("KVMCTL_IMAGE_DIR") or DEFAULT_IMAGE_DIR)
    cache_root = Path(os.environ.get("KVMCTL_IMAGE_CACHE") or DEFAULT_CACHE_DIR)
    started = time.monotonic()
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        image_root.mkdir(parents=True, exist_ok=True)
        os.chmod(image_root, 0o755)
        with open(cache_root / ".lock", "w") as lock:
            # Two builds at once (a developer and CI) would fight over the cache.
            fcntl.flock(lock, fcntl.LOCK_EX)
            initramfs = [f for f in wanted if f in FLAVOURS]
            if initramfs:
                build(initramfs, image_root, Cache(cache_root), args.force)
            for name in wanted:
                if name in DISK_FLAVOURS:
                    build_flavour(DISK_FLAVOURS[name], image_root, cache_root, args.force)
    except BuildError as exc:
        log(f"error: {exc}")
        return 1
    log(f"done in {time.monotonic() - started:.1f}s")
    return 0


def build(wanted: list[str], image_root: Path, cache: Cache, force: bool) -> None:
    kernels, userland, host = resolve_packages(cache)
    host_files = host_closure()
    keys = {
        name: build_key(FLAVOURS[name], kernels[name], userland, host, host_files)
        for name in wanted
    }
    todo = [n for n in wanted
            if force or not up_to_date(image_root / n, keys[n], ("vmlinuz", "initrd.img"))]
    for name in wanted:
        if name not in todo:
            log(f"{name}: up to date in {image_root / name}")
    if todo:
        pkgs = [kernels[n] for n in todo] + list(userland.values())
        trees_by_pkg = cache.ensure(pkgs)
        trees = {p.name: t for p, t in trees_by_pkg.items()}
        for name in todo:
            t0 = time.monotonic()
            manifest = write_flavour(image_root / name, FLAVOURS[name], kernels[name],
                                     userland, host, trees, keys[name], t0)
            log(
                f"{name}: built {manifest['kernel_release']} in "
                f"{time.monotonic() - t0:.1f}s -> {image_root / name}"
            )
        # Keep only what the current flavours use; old kernels are large.
        cache.prune(list(kernels.values()) + list(userland.values()))


if __name__ == "__main__":
    sys.exit(main())
