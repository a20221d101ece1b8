"""Pure parts of the netlink adapter: names, error mapping, addresses, VLAN rules."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from kvmctl.adapters.netlink.support import (
    IFNAMSIZ,
    access_vlan_changes,
    address_changes,
    brport,
    check_ifname,
    check_vid,
    guest_mac,
    ifb_alias,
    ifb_name,
    ifb_tap,
    link_kind,
    netlink_failure,
    parse_cidr,
    vlan_support,
    vlan_unsupported_message,
)
from kvmctl.errors import ApplyError, HostError, UsageError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("name", ["kvbr-media", "vnet0", "a", "br.20", "x" * 15])
def test_ifname_accepted(name: str) -> None:
    assert check_ifname(name) == name


@pytest.mark.parametrize("name", ["", "x" * 16, "br 0", "br/0", "br:0", "-br", "brü"])
def test_ifname_refused(name: str) -> None:
    with pytest.raises(UsageError, match="not a valid interface name"):
        check_ifname(name)


@pytest.mark.parametrize(
    ("code", "kind", "words"),
    [
        (errno.EOPNOTSUPP, HostError, "does not support"),
        (errno.EPERM, HostError, "run as root"),
        (errno.ENODEV, HostError, "no such interface"),
        (errno.ENOENT, HostError, "lacks the feature"),
        (errno.EEXIST, ApplyError, "File exists"),
        (errno.EBUSY, ApplyError, "busy"),
        (errno.EINVAL, ApplyError, "Invalid argument"),
    ],
)
def test_netlink_errors_map_to_exit_statuses(code: int, kind: type, words: str) -> None:
    err = netlink_failure(code, "create bridge", "kvbr-media", " in network namespace 'lab'")
    assert type(err) is kind
    text = str(err)
    assert text.startswith("cannot create bridge 'kvbr-media' in network namespace 'lab': ")
    assert words in text and f"errno {code}" in text


def test_netlink_error_keeps_the_kernels_detail() -> None:
    err = netlink_failure(errno.EINVAL, "limit the bandwidth of", "vnet3", "", "quantum too big")
    assert str(err) == (
        "cannot limit the bandwidth of 'vnet3': Invalid argument: quantum too big (errno 22)"
    )


def test_netlink_error_without_an_interface() -> None:
    err = netlink_failure(errno.EPERM, "list the interfaces", "")
    assert str(err).startswith("cannot list the interfaces: not permitted")


def test_ifb_names_fit_and_are_stable() -> None:
    assert ifb_name("vnet12") == "ifb-vnet12"
    assert ifb_name("x" * 11) == "ifb-" + "x" * 11
    long_a, long_b = ifb_name("tap-fifteen-chr"), ifb_name("tap-fifteen-chs")
    assert len(long_a) == IFNAMSIZ and long_a.startswith("ifb-")
    assert long_a == ifb_name("tap-fifteen-chr") != long_b
    assert ifb_alias("vnet12") == "kvmctl:ifb:vnet12"
    assert ifb_tap(ifb_alias("tap-fifteen-chr")) == "tap-fifteen-chr"
    assert ifb_tap("kvmctl:lab:vehicle") is None
    assert ifb_tap("kvmctl:ifb:") is None
    assert ifb_tap(None) is None


def test_parse_cidr() -> None:
    assert parse_cidr("10.77.2.1/24") == ipaddress.IPv4Interface("10.77.2.1/24")
    iface = ipaddress.IPv4Interface("10.0.0.1/8")
    assert parse_cidr(iface) is iface
    with pytest.raises(UsageError, match="no prefix length"):
        parse_cidr("10.77.2.1")
    with pytest.raises(UsageError, match="not an IPv4 address"):
        parse_cidr("fe80::1/64")


def test_address_changes_leave_exactly_the_wanted_one() -> None:
    a, b = ipaddress.IPv4Interface("10.0.0.1/24"), ipaddress.IPv4Interface("10.0.0.2/24")
    wider = ipaddress.IPv4Interface("10.0.0.1/16")
    assert address_changes([], a) == ([], [a])
    assert address_changes([a], a) == ([], [])
    assert address_changes([a, b], a) == ([b], [])
    assert address_changes([wider], a) == ([wider], [a])  # same address, other prefix
    assert address_changes([a, b], None) == ([a, b], [])


@pytest.mark.parametrize(
    ("tap", "guest"),
    [
        ("fe:54:00:12:6b:b3", "52:54:00:12:6b:b3"),
        ("FE:54:00:12:6B:B3", "52:54:00:12:6b:b3"),
        ("52:54:00:12:6b:b3", "52:54:00:12:6b:b3"),
        ("4e:56:8d:92:b5:06", "4e:56:8d:92:b5:06"),
        (None, None),
    ],
)
def test_guest_mac_behind_a_libvirt_tap(tap: str | None, guest: str | None) -> None:
    assert guest_mac(tap) == guest


def test_link_kind_and_bridge_port_attributes() -> None:
    port = {"linkinfo": {"kind": "tun", "slave_kind": "bridge", "slave_data": {"x": 1}}}
    assert link_kind({"linkinfo": {"kind": "bridge"}}) == "bridge"
    assert link_kind({"ifname": "lo"}) is None
    assert brport(port) == {"x": 1}
    assert brport({"linkinfo": {"kind": "veth"}}) is None
    assert brport({"ifname": "lo"}) is None


@pytest.mark.parametrize("vid", [1, 20, 4094])
def test_vid_in_range(vid: int) -> None:
    assert check_vid(vid) == vid


@pytest.mark.parametrize("vid", [0, 4095, -1, True, "20", 2.0])
def test_vid_out_of_range(vid: object) -> None:
    with pytest.raises(UsageError, match="1-4094"):
        check_vid(vid)  # type: ignore[arg-type]


CONFIG_NO_VLAN = """
CONFIG_BRIDGE=y
# CONFIG_VLAN_8021Q is not set
CONFIG_NET_SCH_HTB=y
"""
CONFIG_VLAN = "CONFIG_BRIDGE=y\nCONFIG_VLAN_8021Q=m\nCONFIG_BRIDGE_VLAN_FILTERING=y\n"
CONFIG_VLAN_NO_FILTER = "CONFIG_VLAN_8021Q=y\n# CONFIG_BRIDGE_VLAN_FILTERING is not set\n"


@pytest.mark.parametrize(
    ("config", "proc", "module", "expected"),
    [
        (CONFIG_NO_VLAN, False, False, False),  # this CI host
        (CONFIG_VLAN, False, False, True),  # module not loaded yet, but buildable
        (CONFIG_VLAN_NO_FILTER, True, True, False),  # 802.1Q but no bridge filtering
        (None, False, False, False),  # no config: only a loaded module counts
        (None, True, False, True),
        (None, False, True, True),
    ],
)
def test_vlan_support(config: str | None, proc: bool, module: bool, expected: bool) -> None:
    assert vlan_support(config, proc, module) is expected


def test_vlan_refusal_is_one_clear_sentence() -> None:
    text = vlan_unsupported_message("vnet0", 20)
    assert text.startswith("cannot put 'vnet0' on VLAN 20: ")
    assert "802.1Q" in text and "remove vlan:" in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("current", "vid", "add", "remove"),
    [
        ({1}, 20, [20], [1]),  # fresh port: leave the default VLAN 1
        (set(), 20, [20], []),
        ({20}, 20, [20], []),  # re-add: makes it PVID/untagged if it was not
        ({1, 20, 30}, 20, [20], [1, 30]),
        ({1}, 1, [1], []),
    ],
)
def test_access_vlan_changes(
    current: set[int], vid: int, add: list[int], remove: list[int]
) -> None:
    assert access_vlan_changes(current, vid) == (add, remove)


def test_access_vlan_checks_the_id() -> None:
    with pytest.raises(UsageError):
        access_vlan_changes({1}, 5000)
