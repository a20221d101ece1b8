"""What libvirt and the KVM device say before any probe guest is booted: the
domain types libvirt offers, and whether the user libvirt runs QEMU as may
open the device.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree


def guest_domain_types(capabilities_xml: str, arch: str) -> set[str]:
    """Domain types (kvm, qemu) libvirt offers for guests of `arch`."""
    root = ElementTree.fromstring(capabilities_xml)
    types: set[str] = set()
    for guest in root.findall("guest"):
        arch_el = guest.find("arch")
        if arch_el is None or arch_el.get("name") != arch:
            continue
        for dom in arch_el.findall("domain"):
            kind = dom.get("type")
            if kind:
                types.add(kind)
    return types


def parse_qemu_conf_user(text: str) -> tuple[str | None, str | None]:
    """`user = "..."` and `group = "..."` from libvirt's qemu.conf (None when unset)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r'\s*(user|group)\s*=\s*"([^"]*)"', line)
        if m:
            found[m.group(1)] = m.group(2)
    return found.get("user"), found.get("group")


def can_access(mode: int, owner: int, group: int, uid: int, gids: Sequence[int]) -> bool:
    """Read and write permission on a device node for a process with `uid` and `gids`."""
    if uid == 0:
        return True
    rw = stat.S_IRUSR | stat.S_IWUSR
    if owner == uid:
        return mode & rw == rw
    rw = stat.S_IRGRP | stat.S_IWGRP
    if group in gids:
        return mode & rw == rw
    rw = stat.S_IROTH | stat.S_IWOTH
    return mode & rw == rw


def qemu_access_problem(
    device: Path, qemu_conf: Path = Path("/etc/libvirt/qemu.conf")
) -> str | None:
    """Why QEMU, run by libvirt as its unprivileged user, could not open `device`; None if it can.

    libvirt 9 also re-probes QEMU's capabilities without end in this state,
    which stalls every domain start, so it is worth catching before booting.
    """
    try:
        st = device.stat()
    except OSError:
        return None
    user: str | None = None
    group: str | None = None
    try:
        user, group = parse_qemu_conf_user(qemu_conf.read_text())
    except OSError:
        pass
    names = [user] if user else ["libvirt-qemu", "qemu"]
    for name in names:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        gid = pw.pw_gid
        if group:
            try:
                gid = grp.getgrnam(group).gr_gid
            except KeyError:
                pass
        gids = os.getgrouplist(name, gid)
        if can_access(st.st_mode, st.st_uid, st.st_gid, pw.pw_uid, gids):
            return None
        return (
            f"{device} ({_owner(st)} {stat.S_IMODE(st.st_mode):04o}) cannot be opened by "
            f"'{name}', the user libvirt runs QEMU as (give it the usual permissions: "
            f"`chgrp kvm {device} && chmod 0660 {device}`)"
        )
    return None  # user unknown: let the boot decide


def _owner(st: os.stat_result) -> str:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return f"{user}:{group}"
