"""The guest images `make images` builds: where their artifacts live, whether
they are intact, and the kernel command line the test guests obey.

They are built by `guest-images/build.sh` into `$KVMCTL_IMAGE_DIR/<flavour>/`
(default `/var/lib/kvmctl/images`), each with a `manifest.json` recording the
sha256 of every artifact:

- the test guests (`image: {builtin: test-guest}`), booted directly: `vmlinuz`,
  `initrd.img`, for some flavours `vmlinux` (the same kernel uncompressed,
  booted through its PVH entry); the manifest names the kernel to boot
  (`boot_kernel`);
- disk images (`debian-12`), which boot on their own like a downloaded cloud
  image: `disk.qcow2` (the manifest's `disk`), a backing image for an overlay.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmctl.errors import HostError, UsageError
from kvmctl.state.paths import image_dir

FLAVOURS = ("test-guest", "test-guest-rt")  # booted directly (kernel + initramfs)
DISK_FLAVOURS = ("debian-12",)  # booted from their own disk
ARTIFACTS = ("vmlinuz", "initrd.img")  # always there; "vmlinux" optional
MANIFEST = "manifest.json"

# x86 COMMAND_LINE_SIZE; the kernel silently truncates beyond it.
MAX_CMDLINE = 2048

# Serial markers printed by the guest's /init.
READY_MARKER = "KVMCTL-READY"
PROBE_MARKER = "KVMCTL-PROBE-OK"

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_KEY_RE = re.compile(r"[A-Za-z0-9_.-]+")
# Kernel command line values cannot be quoted portably: keep them plain.
_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:/=+@%-]*")


@dataclass(frozen=True)
class GuestImage:
    """A verified test-guest flavour, ready for a direct kernel boot."""

    flavour: str
    kernel: Path  # what to boot: vmlinuz (bzImage) or vmlinux (ELF, PVH entry)
    initrd: Path
    manifest: Mapping[str, Any] = field(compare=False)
    cmdline_base: str

    @property
    def kernel_release(self) -> str:
        return str(self.manifest.get("kernel_release", ""))

    def cmdline(
        self,
        name: str,
        nics: Sequence[tuple[str, str]] = (),
        extra: Mapping[str, str | None] | None = None,
    ) -> str:
        """The full command line: the image's base plus `kernel_cmdline(...)`."""
        full = f"{self.cmdline_base} {kernel_cmdline(name, nics, extra or {})}".strip()
        if len(full) >= MAX_CMDLINE:
            raise UsageError(
                f"kernel command line for '{name}' is {len(full)} bytes: "
                f"the kernel keeps only {MAX_CMDLINE - 1}"
            )
        return full


# (path, size, mtime_ns) -> sha256 found; hashing ~20 MiB on every plan or
# start would be wasted when nothing changed on disk.
_hash_cache: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    _hash_cache[key] = digest
    return digest


def _broken(flavour: str, state: str, reason: str) -> HostError:
    return HostError(f"guest image '{flavour}' is {state}: run `make images`", reasons=[reason])


def _manifest(flavour: str, known: tuple[str, ...]) -> tuple[Path, dict[str, Any]]:
    """The flavour's directory and its manifest, checked for shape only."""
    if flavour not in known:
        raise UsageError(f"unknown guest image '{flavour}': choose one of {', '.join(known)}")
    root = image_dir() / flavour
    mpath = root / MANIFEST
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError:
        raise _broken(flavour, "missing", f"{mpath} does not exist") from None
    except (OSError, ValueError) as exc:
        raise _broken(flavour, "corrupt", f"{mpath} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("artifacts"), dict):
        raise _broken(flavour, "corrupt", f"{mpath} lists no artifacts")
    if manifest.get("flavour", flavour) != flavour:
        raise _broken(flavour, "corrupt", f"{mpath} describes '{manifest.get('flavour')}'")
    return root, manifest


def _verify(flavour: str, root: Path, manifest: Mapping[str, Any], names: Sequence[str]) -> None:
    """Each named artifact exists and matches its size and sha256 in the manifest."""
    mpath = root / MANIFEST
    for name in dict.fromkeys(names):
        path = root / name
        meta = manifest["artifacts"].get(name)
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
            raise _broken(flavour, "corrupt", f"{mpath} has no sha256 for {name}")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise _broken(flavour, "missing", f"{path} does not exist") from None
        except OSError as exc:
            raise _broken(flavour, "corrupt", f"{path}: {exc.strerror}") from None
        if "size" in meta and meta["size"] != size:
            raise _broken(
                flavour, "corrupt", f"{path} is {size} bytes, manifest says {meta['size']}"
            )
        if _sha256(path) != meta["sha256"]:
            raise _broken(flavour, "corrupt", f"{path} does not match its sha256 in {mpath}")


def artifacts(flavour: str) -> GuestImage:
    """Locate and verify one test-guest flavour, or say plainly that `make images` is needed."""
    root, manifest = _manifest(flavour, FLAVOURS)
    boot_kernel = manifest.get("boot_kernel", "vmlinuz")
    if boot_kernel not in ("vmlinuz", "vmlinux"):
        raise _broken(
            flavour, "corrupt", f"{root / MANIFEST} names an odd boot_kernel {boot_kernel!r}"
        )
    _verify(flavour, root, manifest, (*ARTIFACTS, boot_kernel))
    return GuestImage(
        flavour=flavour,
        kernel=root / boot_kernel,
        initrd=root / "initrd.img",
        manifest=manifest,
        cmdline_base=str(manifest.get("cmdline_base", "")),
    )


@dataclass(frozen=True)
class DiskImage:
    """A verified disk-image flavour: a backing image for a VM's overlay."""

    flavour: str
    path: Path
    virtual_size: int  # bytes; an overlay smaller than this cuts the disk short
    manifest: Mapping[str, Any] = field(compare=False)


def disk_image(flavour: str) -> DiskImage:
    """Locate and verify one disk-image flavour, or say that `make images` is needed."""
    root, manifest = _manifest(flavour, DISK_FLAVOURS)
    disk = manifest.get("disk")
    size = manifest.get("virtual_size")
    if not isinstance(disk, str) or "/" in disk or not disk.endswith(".qcow2"):
        raise _broken(flavour, "corrupt", f"{root / MANIFEST} names an odd disk {disk!r}")
    if not isinstance(size, int) or size <= 0:
        raise _broken(flavour, "corrupt", f"{root / MANIFEST} has no virtual_size")
    _verify(flavour, root, manifest, (disk,))
    return DiskImage(flavour=flavour, path=root / disk, virtual_size=size, manifest=manifest)


def kernel_cmdline(
    name: str,
    nics: Sequence[tuple[str, str]],
    extra: Mapping[str, str | None],
) -> str:
    """The kvmctl part of a test guest's kernel command line.

    `nics` pairs a MAC with an address in CIDR form; the guest gives that
    address to the NIC with that MAC (one `kvmctl.ip=` word per pair, so any
    number of NICs and addresses survive the kernel's word splitting). `extra`
    adds `key=value` words, or a bare `key` for a None value.
    """
    if not _NAME_RE.fullmatch(name):
        raise UsageError(
            f"guest name '{name}' cannot go on a kernel command line: "
            "use 1-63 letters, digits, '.', '_' or '-'"
        )
    words = [f"kvmctl.name={name}"]
    for mac, cidr in nics:
        mac_norm = mac.strip().lower().replace("-", ":")
        if not _MAC_RE.fullmatch(mac_norm):
            raise UsageError(f"'{mac}' is not a MAC address (want aa:bb:cc:dd:ee:ff)")
        try:
            iface = ipaddress.ip_interface(cidr)
        except ValueError:
            raise UsageError(f"'{cidr}' is not an address with prefix (want 10.0.0.2/24)") from None
        if "/" not in cidr:
            raise UsageError(f"'{cidr}' has no prefix length (want {cidr}/24 or similar)")
        words.append(f"kvmctl.ip={mac_norm},{iface.with_prefixlen}")
    for key, value in extra.items():
        if not _KEY_RE.fullmatch(key):
            raise UsageError(f"'{key}' cannot be a kernel command line parameter name")
        if value is None:
            words.append(key)
            continue
        value = str(value)
        if not _VALUE_RE.fullmatch(value):
            raise UsageError(
                f"value of {key} ('{value}') has characters a kernel command line "
                "cannot carry unquoted"
            )
        words.append(f"{key}={value}")
    return " ".join(words)


def image_version(builtin: str | None, path: str | None) -> str | None:
    """The version a warm start's saved state is kept for: the sha256 of a
    built-in image's manifest (which names every artifact's sha256, so it
    changes with any of them); for an image the spec names by path, its
    size and modification time (hashing gigabytes on every start is too
    slow). None when it cannot be read."""
    try:
        if builtin:
            return _sha256(image_dir() / builtin / MANIFEST)
        st = Path(str(path)).stat()
        return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    except OSError:
        return None
