"""Name rules for what kvmctl creates.

libvirt itself accepts almost any domain name, but names end up in file
paths, log file names, cgroup paths and shell-facing tools, so kvmctl only
creates names from a conservative character set.
"""

from __future__ import annotations

import re
import uuid

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
_CPUSET = re.compile(r"\^?\d+(-\d+)?(,\^?\d+(-\d+)?)*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# Linux IFNAMSIZ is 16 including the terminating NUL.
_IFNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")

DOMAIN_NAME_MAX = 64
VOLUME_NAME_MAX = 255
# A shmem's name is a file name in /dev/shm (NAME_MAX).
SHMEM_NAME_MAX = 255


def check_name(kind: str, name: object, max_len: int) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if len(name) > max_len:
        raise ValueError(f"{kind} name {name!r} is longer than {max_len} characters")
    if not _SAFE.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} may only contain letters, digits and '_.+-', "
            "and must start with a letter or digit"
        )
    return name


def validate_domain_name(name: str) -> str:
    """Return `name` if kvmctl may create a domain (or pool) with it."""
    return check_name("domain", name, DOMAIN_NAME_MAX)


def validate_pool_name(name: str) -> str:
    return check_name("storage pool", name, DOMAIN_NAME_MAX)


def validate_volume_name(name: str) -> str:
    """Volume names become file names inside the pool directory."""
    return check_name("volume", name, VOLUME_NAME_MAX)


def validate_shmem_name(name: str) -> str:
    """libvirt backs an ivshmem-plain region with /dev/shm/<name>."""
    return check_name("shmem", name, SHMEM_NAME_MAX)


# Every region kvmctl declares is named SHMEM_PREFIX + "<set>.<channel>".
SHMEM_PREFIX = "kvmctl."


def shmem_set_prefix(set_name: str) -> str:
    """What the names of a set's regions, and no other set's, start with."""
    return f"{SHMEM_PREFIX}{set_name}."


def shmem_name(set_name: str, channel: str) -> str:
    """The host-wide name of a set's region. Set and channel names cannot
    contain '.', so no two (set, channel) pairs share a name."""
    return validate_shmem_name(shmem_set_prefix(set_name) + channel)


def validate_ifname(name: str) -> str:
    """Host network interface names (bridges, tap devices)."""
    if not isinstance(name, str) or not _IFNAME.fullmatch(name):
        raise ValueError(
            f"interface name {name!r} must be 1-15 letters, digits or '_.-', "
            "starting with a letter or digit"
        )
    return name


def validate_uuid(value: str) -> str:
    """Only the canonical lower-case form, the one libvirt writes back, so a
    domain read from libvirt compares equal to the one that was defined."""
    try:
        canonical = str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{value!r} is not a UUID") from None
    if canonical != value:
        raise ValueError(f"UUID {value!r} must be written as {canonical!r}")
    return value


def validate_cpuset(value: str) -> str:
    """libvirt's cpuset syntax, e.g. ``0-3,^2,6``; the planner owns its meaning."""
    if not isinstance(value, str) or not _CPUSET.fullmatch(value):
        raise ValueError(f"{value!r} is not a cpuset such as '0-3,^2,6'")
    return value


def validate_mac(value: str) -> str:
    """Lower case only, as libvirt writes it back, so read-back compares equal."""
    if not isinstance(value, str) or not _MAC.fullmatch(value):
        raise ValueError(f"{value!r} is not a MAC address such as '52:54:00:12:34:56'")
    return value
