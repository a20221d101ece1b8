"""The host side of channels, done before QEMU starts and after the set is
gone: shared regions' backing files in /dev/shm and the directory of serial
channel sockets (docs/channels.md).

libvirt hands QEMU the path /dev/shm/<name> for an ivshmem-plain region.
When that file is missing QEMU creates it with mode 0644 (libvirt runs QEMU
under umask 002): readable by every user of the host. So kvmctl creates it
first, mode 0600 and owned by the user libvirt runs QEMU as, and QEMU opens
what it finds. libvirt never removes the file; kvmctl does when the set is
destroyed or the channel leaves the spec.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection
from pathlib import Path

from kvmctl.errors import HostError
from kvmctl.planner.channels import SHM_DIR, ChannelPlan, ShmRegion
from kvmctl.state.paths import ensure_dir
from kvmctl.xml.base import parse_xml
from kvmctl.xml.names import shmem_set_prefix

REGION_MODE = 0o600


def parse_dac_owner(capabilities_xml: str, virt_type: str) -> tuple[int, int] | None:
    """(uid, gid) libvirt runs QEMU as: the DAC base label of its capabilities
    (`+64055:+64055`). None where there is none (QEMU runs as the caller)."""
    for model in parse_xml(capabilities_xml).iterfind("host/secmodel"):
        if model.findtext("model") != "dac":
            continue
        for label in model.iterfind("baselabel"):
            if label.get("type") == virt_type:
                uid, _, gid = (label.text or "").partition(":")
                try:
                    return int(uid.lstrip("+")), int(gid.lstrip("+"))
                except ValueError:
                    return None
    return None


def prepare(channels: ChannelPlan, shm_dir: Path = Path(SHM_DIR)) -> list[ShmRegion]:
    """Everything one VM's channels need on this host before its QEMU starts.
    Returns the regions whose files were created now (a rollback removes them)."""
    for directory in sorted({Path(s.socket).parent for s in channels.serials}):
        ensure_dir(directory)  # libvirt binds the sockets there
    return [r for r in channels.regions if prepare_region(r, channels.owner, shm_dir)]


def prepare_region(
    region: ShmRegion, owner: tuple[int, int] | None, shm_dir: Path = Path(SHM_DIR)
) -> bool:
    """Make the region's file private to QEMU's user and at least its size
    (QEMU refuses a smaller file, and leaves a larger one as it is). True when
    it was created now."""
    path = shm_dir / region.name
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    not_ours = f"{path} is not a regular file kvmctl made: remove it to share '{region.channel}'"
    try:
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, REGION_MODE)
            created = True
        except FileExistsError:
            # Without O_CREAT: fs.protected_regular refuses O_CREAT on a file of
            # another user (QEMU's) in the sticky /dev/shm, even to root.
            fd = os.open(path, flags)
            created = False
    except (IsADirectoryError, NotADirectoryError):
        raise HostError(not_ours) from None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symbolic link: never followed
            raise HostError(not_ours) from None
        raise HostError(
            f"cannot prepare {path} for shared region '{region.channel}': {err}"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HostError(not_ours)
        os.fchmod(fd, REGION_MODE)
        if owner is not None and (st.st_uid, st.st_gid) != owner:
            os.fchown(fd, *owner)
        if st.st_size < region.size:
            os.ftruncate(fd, region.size)
    finally:
        os.close(fd)
    return created


def remove(name: str, shm_dir: Path = Path(SHM_DIR)) -> None:
    """Remove one region file (a rollback, or a channel that left the spec)."""
    (shm_dir / name).unlink(missing_ok=True)


def remove_set(
    set_name: str, keep: Collection[str] = (), shm_dir: Path = Path(SHM_DIR)
) -> list[str]:
    """Remove the set's region files but those named in `keep` (destroy);
    their names. The prefix never matches another set's files."""
    prefix = shmem_set_prefix(set_name)
    removed: list[str] = []
    try:
        entries = sorted(shm_dir.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name not in keep:
            try:
                entry.unlink()
            except FileNotFoundError:
                continue
            removed.append(entry.name)
    return removed
