"""Pure helpers of the netlink adapter: names, error wording, VLAN and tap rules.

Nothing here talks to the kernel, so all of it is unit-tested without root;
`kvmctl.adapters.netlink.core` does the netlink calls and leans on these.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

from kvmctl.errors import ApplyError, HostError, KvmctlError, UsageError

IFNAMSIZ = 15  # longest Linux interface name, without the trailing NUL
# The kernel accepts almost any byte in a name; kvmctl only ever asks for these.
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
IFB_PREFIX = "ifb-"
IFB_ALIAS_PREFIX = "kvmctl:ifb:"

# The kernel answers these when a feature or object is missing on this host: the
# host cannot do what was asked (exit 3). Anything else is a failed change (exit 1).
_HOST_ERRNOS = {
    errno.EOPNOTSUPP: "this kernel does not support it",
    errno.EPERM: "not permitted (run as root, with CAP_NET_ADMIN)",
    errno.EACCES: "not permitted (run as root, with CAP_NET_ADMIN)",
    errno.ENODEV: "no such interface",
    errno.ENOENT: "this kernel lacks the feature (module not built?)",
    errno.EAFNOSUPPORT: "this kernel does not support the address family",
}


def check_ifname(name: str) -> str:
    """An interface name kvmctl is willing to use, else UsageError."""
    if not _IFNAME_RE.match(name):
        raise UsageError(
            f"'{name}' is not a valid interface name: at most {IFNAMSIZ} letters, digits, "
            "'-', '_' or '.', starting with a letter or digit"
        )
    return name


def netlink_failure(
    code: int, action: str, ifname: str, where: str = "", detail: str = ""
) -> KvmctlError:
    """The error to raise when the kernel refused `action` on `ifname` with errno `code`.

    `where` names the network namespace (" in network namespace 'x'"), `detail`
    is the kernel's extended message when it gave one.
    """
    reason = _HOST_ERRNOS.get(code) or os.strerror(code)
    if detail and detail != os.strerror(code):
        reason = f"{reason}: {detail}"
    target = f" '{ifname}'" if ifname else ""
    sentence = f"cannot {action}{target}{where}: {reason} (errno {code})"
    if code in _HOST_ERRNOS:
        return HostError(sentence)
    return ApplyError(sentence)


def link_kind(msg: Any) -> str | None:
    """The IFLA_INFO_KIND of a pyroute2 link message ("bridge", "veth", "tun", ...)."""
    info = msg.get("linkinfo")
    return info.get("kind") if info is not None else None


def brport(msg: Any) -> Any:
    """The bridge-port attributes of a pyroute2 link message, or None for a non-port."""
    info = msg.get("linkinfo")
    if info is None or info.get("slave_kind") != "bridge":
        return None
    return info.get("slave_data")


# --- bandwidth shaping names -------------------------------------------------------


def ifb_name(ifname: str) -> str:
    """The ifb device that shapes what the guest behind `ifname` sends.

    `ifb-<tap>` when that fits in 15 bytes (libvirt's vnetN always does); a
    stable hash of the tap name otherwise, so one tap always maps to one ifb.
    """
    room = IFNAMSIZ - len(IFB_PREFIX)
    if len(ifname) <= room:
        return IFB_PREFIX + ifname
    return IFB_PREFIX + hashlib.sha256(ifname.encode()).hexdigest()[:room]


def ifb_alias(ifname: str) -> str:
    """Marks an ifb as kvmctl's and says which tap it serves."""
    return IFB_ALIAS_PREFIX + ifname


def ifb_tap(alias: str | None) -> str | None:
    """The tap a kvmctl ifb serves, from its alias; None for any other interface."""
    if not alias or not alias.startswith(IFB_ALIAS_PREFIX):
        return None
    return alias[len(IFB_ALIAS_PREFIX) :] or None


# --- host address ------------------------------------------------------------------


def parse_cidr(cidr: str | ipaddress.IPv4Interface) -> ipaddress.IPv4Interface:
    if isinstance(cidr, ipaddress.IPv4Interface):
        return cidr
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError:
        raise UsageError(
            f"'{cidr}' is not an IPv4 address with prefix length (e.g. 10.77.2.1/24)"
        ) from None
    if "/" not in str(cidr):
        raise UsageError(f"'{cidr}' has no prefix length (e.g. {cidr}/24)")
    return iface


def address_changes(
    present: list[ipaddress.IPv4Interface], wanted: ipaddress.IPv4Interface | None
) -> tuple[list[ipaddress.IPv4Interface], list[ipaddress.IPv4Interface]]:
    """(remove, add) so that `wanted` becomes the only IPv4 address."""
    remove = [a for a in present if a != wanted]
    add = [wanted] if wanted is not None and wanted not in present else []
    return remove, add


# --- libvirt taps --------------------------------------------------------------------


def guest_mac(tap_mac: str | None) -> str | None:
    """The guest MAC behind a libvirt tap: libvirt gives the host end of the tap
    the guest's MAC with the first byte set to 0xfe, so the host never answers
    for the guest's address."""
    if not tap_mac:
        return None
    mac = tap_mac.lower()
    return "52" + mac[2:] if mac.startswith("fe:") else mac


# --- VLANs -------------------------------------------------------------------------


def check_vid(vid: int) -> int:
    if isinstance(vid, bool) or not isinstance(vid, int) or not 1 <= vid <= 4094:
        raise UsageError(f"VLAN id {vid!r} is out of range: use 1-4094")
    return vid


def vlan_support(kernel_config: str | None, proc_net_vlan: bool, module_loaded: bool) -> bool:
    """Whether a bridge port can be put on a VLAN here.

    A port VLAN is bridge VLAN filtering, which the kernel builds only with
    802.1Q. The kernel's own config is the honest answer; without it, a loaded
    8021q module (which makes /proc/net/vlan) is the only sign left.
    """
    if kernel_config is not None:
        opts = _config_options(kernel_config)
        return (
            opts.get("CONFIG_VLAN_8021Q") in ("y", "m")
            and opts.get("CONFIG_BRIDGE_VLAN_FILTERING") == "y"
        )
    return proc_net_vlan or module_loaded


def _config_options(text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("CONFIG_"):
            opts[key] = value
    return opts


def read_kernel_config() -> str | None:
    """This kernel's build config, from /proc/config.gz or /boot; None if neither exists."""
    try:
        return gzip.decompress(Path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except OSError:
        pass
    try:
        return Path(f"/boot/config-{os.uname().release}").read_text(errors="replace")
    except OSError:
        return None


def vlan_unsupported_message(ifname: str, vid: int) -> str:
    return (
        f"cannot put '{ifname}' on VLAN {vid}: this host's kernel has no 802.1Q support "
        "(CONFIG_VLAN_8021Q is off, so bridge VLAN filtering is not available); remove "
        "vlan: from the spec or run on a host whose kernel has 802.1Q"
    )


def access_vlan_changes(current: set[int], vid: int) -> tuple[list[int], list[int]]:
    """(add, remove) VLAN ids that make a port an untagged access port of `vid` only.

    `vid` is always (re)added: adding a VLAN the port already has rewrites its
    flags, which makes it the port's PVID and untagged even if it was not. The
    bridge puts every new port on VLAN 1; a guest NIC on another VLAN must leave
    it, or it could still talk to untagged neighbours.
    """
    check_vid(vid)
    return [vid], sorted(v for v in current if v != vid)
