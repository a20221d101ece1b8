"""The `debian-12` guest: a disk image that boots on its own, like a downloaded
Debian cloud image (GRUB in the disk's first MiB, root file system on the
first partition, systemd, cloud-init with the NoCloud source, the guest agent,
Debian's cloud kernel), built from Debian packages only.

No loop device, no mount, no partitioning tool on the host:

1. mmdebstrap (unshare mode: whatever it mounts while packages install stays
   in its own mount namespace) installs the packages into a directory;
2. the project's files go in, GRUB's core image is made by the guest's own
   grub-mkimage (through chroot, which mounts nothing);
3. mke2fs -d writes the directory as an ext4 file system straight into the
   raw disk file at the first partition's offset (-E offset);
4. the MBR (GRUB's boot.img code plus a one-entry partition table, written
   here) and GRUB's core image (sectors 1..) fill the gap before it;
5. qemu-img converts the raw file to qcow2.

Rebuilt when the package set resolved from Debian's current lists changes
(a private apt state under the cache, refreshed on each run), or when any
file of the recipe does. Downloaded packages are kept for the next build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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

MiB = 1024 * 1024
SECTOR = 512
# The first partition starts at 1 MiB, as partitioning tools align it; GRUB's
# core image lives in the sectors before it.
PART_START = MiB
# At least the size of kvmctl's default disk (`disk.size`, 1 GiB), so an
# overlay of the default size holds the whole image; cloud-init's growpart
# and resizefs grow the root file system into a larger overlay at first boot.
MIN_DISK = 1024 * MiB

DISK = "disk.qcow2"
# The console on both the screen and ttyS0 (last, so /dev/console is the serial
# port and systemd's and cloud-init's messages reach the serial log).
CMDLINE = "console=tty0 console=ttyS0,115200n8 consoleblank=0"


@dataclass(frozen=True)
class DiskFlavour:
    name: str
    suite: str
    mirrors: tuple[str, ...]
    include: tuple[str, ...]
    recipe: Path  # the flavour's own files (overlay/)


DEBIAN_12 = DiskFlavour(
    name="debian-12",
    suite="bookworm",
    mirrors=(
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://security.debian.org/debian-security bookworm-security main",
    ),
    # Besides mmdebstrap's `apt` variant (Essential: yes packages and apt).
    include=(
        "systemd-sysv", "udev", "dbus",  # dbus: hostnamectl, which cloud-init sets the name with
        "linux-image-cloud-amd64", "initramfs-tools",
        "grub-pc",  # grub-mkimage and the modules; update-grub after kernel upgrades
        "cloud-init", "cloud-guest-utils",  # growpart, for cloud-init's growpart module
        "qemu-guest-agent",
        # Debian 12's cloud images configure the network with ifupdown;
        # cloud-init renders network-config (v2, by MAC) for it.
        "ifupdown", "isc-dhcp-client", "iproute2",
        # As in Debian's cloud images; cloud-init makes its host keys at first boot.
        "openssh-server",
        "sudo", "procps",
        # The toolbox (kvmctl-tool): the test guests' busybox (Debian's dynamic
        # busybox lacks usleep), nc.traditional, cyclictest.
        "busybox-static", "netcat-traditional", "rt-tests",
    ),
    recipe=HERE / "debian-12",
)

DISK_FLAVOURS: dict[str, DiskFlavour] = {DEBIAN_12.name: DEBIAN_12}

# The test guests' toolbox, shared as is: (source under guest-images/, place in the guest).
TOOLBOX = (
    ("rootfs/usr/bin/kvmctl-tool", "usr/lib/kvmctl/kvmctl-tool"),
    ("rootfs/usr/lib/kvmctl/udp-echo-once", "usr/lib/kvmctl/udp-echo-once"),
)
HOST_TOOLS = ("mmdebstrap", "e2fsprogs", "qemu-utils")
DEBCONF = "grub-pc grub-pc/install_devices_empty boolean true\n"


# --------------------------------------------------------------------------- packages


class AptState:
    """apt's view of the flavour's mirrors, kept under the cache and apart from
    the host's own apt (its lists, its status): what a build would install."""

    def __init__(self, root: Path, flavour: DiskFlavour):
        self.root = root
        self.flavour = flavour
        self.config = root / "apt.conf"
        for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d",
                  "var/lib/apt/lists/partial", "var/lib/dpkg", "var/cache/apt/archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        status = root / "var/lib/dpkg/status"
        if not status.exists():
            status.write_text("")  # nothing installed: resolve the whole set
        keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
        (root / "etc/apt/sources.list").write_text("".join(
            line.replace("deb ", f"deb [signed-by={keyring}] ", 1) + "\n"
            for line in flavour.mirrors
        ))
        self.config.write_text(
            f'Dir "{root}/";\n'
            f'Dir::State::status "{status}";\n'
            'APT::Architecture "amd64";\nAPT::Architectures "amd64";\n'
            'Acquire::Languages "none";\nAPT::Install-Recommends "false";\n'
        )
        self.env = dict(os.environ, APT_CONFIG=str(self.config), LC_ALL="C")

    def lists(self) -> list[Path]:
        return sorted((self.root / "var/lib/apt/lists").glob("*_Packages*"))

    def update(self) -> None:
        """Refresh the lists; keep the old ones when the mirror cannot be reached."""
        proc = subprocess.run(
            ["apt-get", "-q", "update"], env=self.env, capture_output=True, text=True,
            check=False,
        )
        failed = proc.returncode != 0 or re.search(r"^(E:|W: Failed|Err:)", proc.stdout
                                                   + proc.stderr, re.M)
        if not self.lists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-2:]
            raise BuildError(
                f"cannot fetch Debian's package lists for {self.flavour.suite}: "
                + " | ".join(detail)
            )
        if failed:
            log(f"{self.flavour.name}: Debian's mirror not reachable; using the lists of "
                "the last successful update")

    def resolve(self) -> dict[str, str]:
        """Name -> version of every package the image gets (the same solution
        mmdebstrap's apt finds: essential set, apt, the includes, their Depends)."""
        stamp = [self.flavour.include, [(p.name, p.stat().st_size, p.stat().st_mtime_ns)
                                        for p in self.lists()]]
        memo = self.root / "resolved.json"
        try:
            saved = json.loads(memo.read_text())
            if saved["stamp"] == json.loads(json.dumps(stamp)):
                return dict(saved["packages"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        out = run(["apt-get", "-s", "-q", "install", "apt", "?essential",
                   *self.flavour.include], env=self.env)
        packages = dict(re.findall(r"^Inst (\S+) \((\S+) ", out, re.M))
        if not packages:
            raise BuildError(f"apt resolved no packages for {self.flavour.name}")
        memo.write_text(json.dumps({"stamp": stamp, "packages": packages}))
        return packages


def recipe_files(flavour: DiskFlavour) -> list[Path]:
    files = [Path(__file__).resolve(), HERE / "imagelib.py"]
    files += [HERE / src for src, _ in TOOLBOX]
    files += sorted(p for p in flavour.recipe.rglob("*") if p.is_file() or p.is_symlink())
    return files


def build_key(flavour: DiskFlavour, packages: dict[str, str], tools: dict[str, str]) -> str:
    parts = {
        "format": MANIFEST_FORMAT,
        "flavour": flavour.name,
        "mirrors": flavour.mirrors,
        "packages": sorted(packages.items()),
        "tools": sorted(tools.items()),
        "recipe": [
            (str(p.relative_to(HERE)), file_sha256(p) if p.is_file() else os.readlink(p))
            for p in recipe_files(flavour)
        ],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def host_tools() -> dict[str, str]:
    found = {name: host_version(name) for name in HOST_TOOLS}
    missing = [name for name, version in found.items() if version is None]
    if missing:
        raise BuildError(
            f"host packages missing: {' '.join(missing)} (apt-get install {' '.join(missing)})"
        )
    return {name: str(version) for name, version in found.items()}


# --------------------------------------------------------------------------- root tree


def bootstrap(flavour: DiskFlavour, target: Path, debs: Path) -> None:
    """Install the packages into `target` (a directory that must not exist)."""
    debs.mkdir(parents=True, exist_ok=True)
    overlay = flavour.recipe / "overlay"
    argv = [
        "mmdebstrap", "--mode=unshare", "--variant=apt", "--format=directory", "--quiet",
        "--include=" + ",".join(flavour.include),
        "--skip=essential/unlink",  # keep the essential .debs for the cache too
        # A throw-away tree needs no fsync per file (finish_root drops the setting).
        "--dpkgopt=force-unsafe-io",
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        # Before any package: initramfs-tools and GRUB read their settings at install.
        f"--setup-hook=cp -R --preserve=mode,timestamps {overlay}/. \"$1\"/",
        # No device to install GRUB to here; the image's boot sectors are written later.
        f"--essential-hook=printf '{DEBCONF}' | chroot \"$1\" debconf-set-selections",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        flavour.suite, str(target), *flavour.mirrors,
    ]
    log(f"{flavour.name}: mmdebstrap {flavour.suite} ({len(flavour.include)} packages "
        "and their dependencies)")
    run(argv, label="mmdebstrap")


def installed(root: Path) -> dict[str, str]:
    out = run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W",
               "-f=${Package}\t${Version}\n"])
    return dict(line.split("\t", 1) for line in out.splitlines() if line)


def kernel_release(root: Path) -> str:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise BuildError(f"expected one kernel in {root}/boot, found {len(kernels)}")
    return kernels[0].name.removeprefix("vmlinuz-")


def grub_cfg(root_uuid: str, kver: str) -> str:
    return f"""\
# Written by kvmctl's image build. A kernel upgrade in the guest runs
# update-grub, which writes an equivalent one (settings in
# /etc/default/grub.d/50-kvmctl.cfg).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set default=0
set timeout=0
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root {root_uuid}
menuentry 'Debian GNU/Linux 12 ({kver})' {{
    linux /boot/vmlinuz-{kver} root=UUID={root_uuid} ro {CMDLINE}
    initrd /boot/initrd.img-{kver}
}}
"""


def finish_root(root: Path, flavour: DiskFlavour, root_uuid: str, kver: str) -> None:
    """What a cloud image build does after the packages: fstab, boot loader
    files, host name, the toolbox."""
    (root / "etc/dpkg/dpkg.cfg.d/99mmdebstrap").unlink(missing_ok=True)
    (root / "etc/fstab").write_text(
        f"UUID={root_uuid} / ext4 rw,discard,errors=remount-ro 0 1\n"
    )
    # mmdebstrap copied the build host's resolver in for apt; the guest gets its own.
    (root / "etc/resolv.conf").write_text("")
    # openssh-server's postinst made host keys: every VM would share them.
    # cloud-init makes each instance its own at first boot.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    grub = root / "boot/grub"
    mods = grub / "i386-pc"
    mods.mkdir(parents=True, exist_ok=True)
    # The files grub-install would copy: the modules GRUB loads from its prefix.
    source = root / "usr/lib/grub/i386-pc"
    for f in sorted(source.iterdir()):
        if f.suffix in (".mod", ".lst") or f.name == "boot.img":
            shutil.copy2(f, mods / f.name)
    # Prefix: the boot disk's first partition. biosdisk reads the disk through
    # the BIOS, part_msdos finds the partition, ext2 reads ext4.
    run(["chroot", str(root), "grub-mkimage", "-O", "i386-pc",
         "-o", "/boot/grub/i386-pc/core.img", "-p", "(,msdos1)/boot/grub",
         "biosdisk", "part_msdos", "ext2"])
    (grub / "grub.cfg").write_text(grub_cfg(root_uuid, kver))
    for src, dest in TOOLBOX:
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(HERE / src, target)
        target.chmod(0o755)
    # The toolbox runs with busybox's applets first on its PATH, so it behaves
    # as in the test guests (usleep, nc -ll -e, netstat, the same awk and ip).
    applets = root / "usr/lib/kvmctl/busybox"
    applets.mkdir(parents=True, exist_ok=True)
    for name in run(["chroot", str(root), "/bin/busybox", "--list"]).split():
        (applets / name).symlink_to("/bin/busybox")
    if not (applets / "usleep").is_symlink():
        raise BuildError("the image's busybox has no usleep applet, which kvmctl-tool uses")
    # It removes e2scrub's LVM snapshots; there is no LVM here, and under TCG it
    # costs the first boot some 20 s of CPU.
    run(["chroot", str(root), "systemctl", "disable", "--quiet", "e2scrub_reap.service"])
    (root / "etc/kvmctl").mkdir(exist_ok=True)
    (root / "etc/kvmctl/image").write_text(f"flavour={flavour.name}\nkernel={kver}\n")


# --------------------------------------------------------------------------- disk


def chs(lba: int) -> bytes:
    """Cylinder/head/sector of an LBA in an MBR entry (255 heads, 63 sectors;
    beyond cylinder 1023 the largest value, which says "use the LBA")."""
    cyl, rest = divmod(lba, 255 * 63)
    if cyl > 1023:
        return b"\xfe\xff\xff"
    head, sector = divmod(rest, 63)
    return bytes([head, ((cyl >> 2) & 0xC0) | (sector + 1), cyl & 0xFF])


def boot_sector(boot_img: bytes, disk_id: int, start: int, sectors: int) -> bytes:
    """GRUB's boot.img code with one bootable Linux partition."""
    mbr = bytearray(SECTOR)
    mbr[:440] = boot_img[:440]
    # boot.img loads the core image from this sector (GRUB_BOOT_MACHINE_KERNEL_SECTOR).
    struct.pack_into("<Q", mbr, 0x5C, 1)
    struct.pack_into("<I", mbr, 440, disk_id)
    mbr[446:462] = struct.pack(
        "<B3sB3sII", 0x80, chs(start), 0x83, chs(start + sectors - 1), start, sectors
    )
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def tree_bytes(root: Path) -> int:
    """Space the tree takes in 4 KiB blocks, one block per inode at least."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            total += max(4096, (st.st_size + 4095) // 4096 * 4096)
    return total


def make_disk(root: Path, raw: Path, root_uuid: str) -> int:
    """Write the bootable raw disk; returns its size in bytes."""
    used = tree_bytes(root)
    # Room for the journal, metadata and a first apt run before growpart.
    size = max(MIN_DISK, -(-(used * 3 // 2 + 128 * MiB) // (64 * MiB)) * 64 * MiB)
    part_bytes = size - PART_START
    raw.unlink(missing_ok=True)
    with open(raw, "wb") as f:
        f.truncate(size)
    run(["mke2fs", "-q", "-F", "-t", "ext4", "-U", root_uuid, "-L", "root",
         "-E", f"offset={PART_START},nodiscard", "-d", str(root),
         str(raw), f"{part_bytes // 1024}k"])
    core = (root / "boot/grub/i386-pc/core.img").read_bytes()
    if len(core) > PART_START - SECTOR:
        raise BuildError(f"GRUB's core image ({len(core)} bytes) does not fit before the partition")
    boot_img = (root / "usr/lib/grub/i386-pc/boot.img").read_bytes()
    disk_id = int(root_uuid.replace("-", "")[:8], 16)
    with open(raw, "r+b") as f:
        f.write(boot_sector(boot_img, disk_id, PART_START // SECTOR, part_bytes // SECTOR))
        f.write(core)
    return size


# --------------------------------------------------------------------------- build


def build_flavour(flavour: DiskFlavour, image_root: Path, cache_root: Path,
                  force: bool) -> None:
    started = time.monotonic()
    cache = cache_root / flavour.name
    apt = AptState(cache / "apt", flavour)
    apt.update()
    tools = host_tools()
    out_dir = image_root / flavour.name
    key = build_key(flavour, apt.resolve(), tools)
    if not force and up_to_date(out_dir, key, (DISK,)):
        log(f"{flavour.name}: up to date in {out_dir}")
        return
    if os.geteuid() != 0:
        raise BuildError(f"{flavour.name} is built as root (mmdebstrap, chroot, file ownership)")
    if shutil.which("mmdebstrap") is None:
        raise BuildError("mmdebstrap not found (apt-get install mmdebstrap)")
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o755)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        root = work / "root"
        bootstrap(flavour, root, cache / "debs")
        log(f"{flavour.name}: packages installed after {time.monotonic() - started:.0f}s")
        packages = installed(root)
        kver = kernel_release(root)
        # Stable for a given package set and recipe, so a rebuild of the same
        # set names the same file system.
        root_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kvmctl:{flavour.name}:{key}"))
        finish_root(root, flavour, root_uuid, kver)
        raw = work / "disk.raw"
        log(f"{flavour.name}: writing the disk (ext4 from the tree, GRUB in the MBR gap)")
        size = make_disk(root, raw, root_uuid)
        shutil.rmtree(root)
        log(f"{flavour.name}: disk written after {time.monotonic() - started:.0f}s")
        run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp / DISK)])
        raw.unlink()
        # The key names what is in the image: apt's answer a moment before
        # mmdebstrap's may differ if the mirror changed in between.
        key = build_key(flavour, packages, tools)
        manifest = {
            "format": MANIFEST_FORMAT,
            "flavour": flavour.name,
            "boot": "disk",
            "disk": DISK,
            "disk_format": "qcow2",
            "virtual_size": size,
            "root_uuid": root_uuid,
            "kernel_release": kver,
            "cmdline": f"root=UUID={root_uuid} ro {CMDLINE}",
            "artifacts": artifact_entries(tmp, [DISK]),
            "packages": packages,
            "built_with": tools,
            "build_key": key,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": None,
        }
        publish(out_dir, tmp, [DISK], manifest, started)
        prune_debs(cache / "debs", packages)
        log(f"{flavour.name}: built {kver}, {len(packages)} packages, "
            f"{size // MiB} MiB disk in {time.monotonic() - started:.1f}s -> {out_dir}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def prune_debs(debs: Path, packages: dict[str, str]) -> None:
    """Keep the .debs of this build only: older versions are never installed again."""
    keep = {f"{name}_{version.replace(':', '%3a')}_" for name, version in packages.items()}
    for deb in debs.glob("*.deb"):
        if not any(deb.name.startswith(k) for k in keep):
            deb.unlink()
