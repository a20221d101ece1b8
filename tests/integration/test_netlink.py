"""The netlink adapter against the real kernel: bridges, port isolation, shaping.

Everything here runs in network namespaces and on bridges this file creates,
in the private subnet 10.99.7.0/24, with no uplink and no default route; the
root-namespace cases only create and delete a bridge of a unique name.
Namespaces are removed by finalizers, which takes every veth, bridge, ifb and
qdisc inside them along.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from pyroute2 import IPRoute, netns

from kvmctl.adapters.netlink import Netlink
from kvmctl.adapters.netlink import vlan as netlink_vlan
from kvmctl.adapters.netlink.shaping import Limit
from kvmctl.adapters.netlink.support import ifb_name
from kvmctl.cli import main
from kvmctl.errors import HostError
from kvmctl.planner.networks import bridge_alias
from kvmctl.planner.nics import plan_nics
from kvmctl.spec import parse_spec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.no_libvirt,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for netlink and namespaces"),
]

TAG = f"kvnl{os.getpid() % 100000}"  # unique per run, so parallel runs never collide
SUBNET = ipaddress.IPv4Network("10.99.7.0/24")
LIMIT = 1_000_000  # bytes/s


# --- namespaces and links --------------------------------------------------------


@pytest.fixture
def make_netns(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Create throwaway network namespaces; all removed when the test ends."""

    def make(suffix: str) -> str:
        name = f"{TAG}{suffix}"
        netns.create(name)
        request.addfinalizer(lambda: netns.remove(name))
        return name

    return make


def ipr(ns: str | None) -> IPRoute:
    return IPRoute(netns=ns, flags=0) if ns else IPRoute()


def links(ns: str | None) -> dict[int, str]:
    with ipr(ns) as ip:
        return {m["index"]: m.get("ifname") for m in ip.link("dump")}


@pytest.fixture(params=["root", "netns"])
def where(request: pytest.FixtureRequest, make_netns: Callable[[str], str]) -> str | None:
    """The same test in the caller's namespace and in a throwaway one."""
    return None if request.param == "root" else make_netns("w")


@pytest.fixture
def scratch_bridges(where: str | None) -> Iterator[list[str]]:
    """Names a test may create in `where`; whatever exists afterwards is deleted."""
    names: list[str] = []
    yield names
    with ipr(where) as ip:
        for name in names:
            for index in ip.link_lookup(ifname=name):
                ip.link("del", index=index)


def assert_untouched(before: dict[int, str], after: dict[int, str], ours: list[str]) -> None:
    # In the root namespace other processes may add links meanwhile; what must
    # hold is that every link that was there is still there, same index, same
    # name, and that none of ours is left.
    assert {i: n for i, n in after.items() if i in before} == before
    assert not set(ours) & set(after.values())


# --- bridges ---------------------------------------------------------------------


def test_bridge_lifecycle_is_idempotent(where: str | None, scratch_bridges: list[str]) -> None:
    name, alias = f"{TAG}b", bridge_alias("t", "vehicle")
    scratch_bridges.append(name)
    before = links(where)
    with Netlink(where) as nl:
        nl.create_bridge(name, alias, mtu=1400)
        index = links(where)
        nl.create_bridge(name, alias, mtu=1400)
        assert links(where) == index  # nothing recreated
        assert nl.bridges()[name] == alias
        info = nl.bridge_info(name)
        assert info is not None
        assert (info.up, info.stp, info.forward_delay, info.mtu) == (True, False, 0, 1400)
        assert info.addresses == []  # not even an IPv6 link-local one
        assert nl.ports(name) == []
        nl.delete_bridge(name, alias)
        nl.delete_bridge(name, alias)  # already gone: fine
        assert name not in nl.bridges()
    after = links(where)
    if where is None:
        assert_untouched(before, after, [name])
    else:
        assert after == before


@pytest.mark.parametrize("kind", ["bridge", "veth"])
def test_foreign_interface_is_refused_and_left_alone(
    where: str | None, scratch_bridges: list[str], kind: str
) -> None:
    name = f"{TAG}f"
    scratch_bridges.append(name)
    with ipr(where) as ip:
        if kind == "bridge":
            ip.link("add", ifname=name, kind="bridge")
        else:
            scratch_bridges.append(f"{TAG}g")
            ip.link("add", ifname=name, kind="veth", peer={"ifname": f"{TAG}g"})
        index = ip.link_lookup(ifname=name)[0]
        ip.link("set", index=index, ifalias="someone else's")
    before = links(where)
    with Netlink(where) as nl:
        with pytest.raises(HostError, match=f"'{name}'.*left untouched"):
            nl.create_bridge(name, bridge_alias("t", "vehicle"))
        with pytest.raises(HostError, match=f"'{name}'.*not deleted"):
            nl.delete_bridge(name, bridge_alias("t", "vehicle"))
    after = links(where)
    assert after[index] == name
    if where is not None:
        assert after == before
    with ipr(where) as ip:
        msg = ip.link("get", index=index)[0]
        assert msg.get("ifalias") == "someone else's"
        assert not msg["flags"] & 1  # not even brought up


def test_host_address_is_exact(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("h")
    with Netlink(ns) as nl:
        nl.create_bridge("kvbr-media", bridge_alias("t", "media"))
        nl.set_host_address("kvbr-media", "10.99.7.1/24")
        nl.set_host_address("kvbr-media", "10.99.7.1/24")
        assert _v4(nl, "kvbr-media") == ["10.99.7.1/24"]
        nl.set_host_address("kvbr-media", ipaddress.IPv4Interface("10.99.7.254/25"))
        assert _v4(nl, "kvbr-media") == ["10.99.7.254/25"]
        nl.set_host_address("kvbr-media", None)
        assert _v4(nl, "kvbr-media") == []


def _v4(nl: Netlink, bridge: str) -> list[str]:
    info = nl.bridge_info(bridge)
    assert info is not None
    return [a for a in info.addresses if ":" not in a]


def test_missing_namespace_is_a_host_error_and_not_created() -> None:
    name = f"{TAG}none"
    with pytest.raises(HostError, match=f"network namespace '{name}' does not exist"):
        Netlink(name)
    assert name not in netns.listnetns()


def test_errors_name_the_interface(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("e")
    with Netlink(ns) as nl:
        with pytest.raises(HostError, match="no interface 'vnet99'"):
            nl.shape("vnet99", Limit(LIMIT), None)
        with pytest.raises(HostError, match="no bridge 'kvbr-x'"):
            nl.ports("kvbr-x")
        nl.create_bridge("kvbr-x", bridge_alias("t", "x"))
        with pytest.raises(HostError, match="'kvbr-x'.* not a bridge port"):
            nl.set_port_isolated("kvbr-x", True)
        if nl.vlan_supported():
            pytest.skip("this kernel has 802.1Q: the refusal below does not apply")
        with pytest.raises(HostError, match="no 802.1Q support"):
            nl.set_port_vlan("kvbr-x", 20)


# --- a lab: a host namespace with a bridge, three guests on veths -------------------


@dataclass
class Lab:
    host: str  # the namespace holding the bridge, like a hypervisor host
    bridge: str
    guests: dict[str, str]  # guest tag -> its namespace
    ports: dict[str, str]  # guest tag -> its bridge port in `host` (the "tap")
    addrs: dict[str, str]  # guest tag -> its address


@pytest.fixture
def lab(make_netns: Callable[[str], str]) -> Lab:
    host = make_netns("H")
    bridge = "kvbr-lab"
    with Netlink(host) as nl:
        nl.create_bridge(bridge, bridge_alias("lab", "vehicle"))
    guests, ports, addrs = {}, {}, {}
    with ipr(host) as ip:
        br = ip.link_lookup(ifname=bridge)[0]
        for n, g in enumerate("abc", start=1):
            ns = make_netns(g)
            port = f"p-{g}"
            ip.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns})
            ip.link("set", index=ip.link_lookup(ifname=port)[0], master=br, state="up")
            addr = str(SUBNET.network_address + n)
            with ipr(ns) as gip:
                eth0 = gip.link_lookup(ifname="eth0")[0]
                gip.addr("add", index=eth0, address=addr, prefixlen=SUBNET.prefixlen)
                gip.link("set", index=eth0, state="up")
                gip.link("set", index=gip.link_lookup(ifname="lo")[0], state="up")
            guests[g], ports[g], addrs[g] = ns, port, addr
    return Lab(host, bridge, guests, ports, addrs)


def ping(ns: str, addr: str, timeout: float = 1.0) -> bool:
    """One ICMP echo from inside `ns` to `addr`; True when the reply came in time."""
    sock = netns.create_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP, flags=0)
    with sock:
        ident, payload = os.getpid() & 0xFFFF, b"kvmctl-netlink-test"
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
        packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
        sock.sendto(packet, (addr, 0))
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if kind == 0 and rid == ident and src == addr:
                return True
    return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def test_port_isolation_blocks_isolated_pairs_only(lab: Lab) -> None:
    g, a = lab.guests, lab.addrs
    with Netlink(lab.host) as nl:
        nl.set_port_isolated(lab.ports["a"], True)
        nl.set_port_isolated(lab.ports["b"], True)
        nl.set_port_isolated(lab.ports["b"], True)  # idempotent
        flags = {p.ifname: p.isolated for p in nl.ports(lab.bridge)}
        assert flags == {"p-a": True, "p-b": True, "p-c": False}

        assert ping(g["a"], a["c"], 2.0) and ping(g["c"], a["a"], 2.0)
        assert ping(g["b"], a["c"], 2.0)
        assert not ping(g["a"], a["b"])
        assert not ping(g["b"], a["a"])

        # The same pair talks once isolation is off: it was isolation that blocked it.
        nl.set_port_isolated(lab.ports["a"], False)
        assert ping(g["a"], a["b"], 2.0)

        counters = {p.ifname: p for p in nl.ports(lab.bridge)}
        assert counters["p-c"].rx_packets > 0 and counters["p-c"].tx_bytes > 0
        assert all(p.kind == "veth" and p.up for p in counters.values())


# --- shaping ---------------------------------------------------------------------


def tcp_rate(src: str, dst: str, addr: str, seconds: float, max_bytes: int) -> float:
    """bytes/s of one TCP stream from namespace `src` to `addr` in `dst`.

    The receiver counts what arrives after a short settling time (TCP slow start,
    the shaper's initial burst) for `seconds`; the sender stops after `max_bytes`.
    """
    settle = 0.3
    srv = netns.create_socket(dst, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    cli = netns.create_socket(src, socket.AF_INET, socket.SOCK_STREAM, flags=0)
    stop = threading.Event()

    def send() -> None:
        chunk, sent = bytes(65536), 0
        cli.settimeout(0.2)
        while not stop.is_set() and sent < max_bytes:
            try:
                sent += cli.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                return
        if not stop.is_set():
            cli.shutdown(socket.SHUT_WR)

    with srv, cli:
        srv.bind((addr, 0))
        srv.listen(1)
        cli.settimeout(5)
        cli.connect((addr, srv.getsockname()[1]))
        conn, _ = srv.accept()
        sender = threading.Thread(target=send, daemon=True)
        with conn:
            conn.settimeout(5)
            buf = bytearray(1 << 20)
            start = time.monotonic() + settle
            end, now, counted = start + seconds, time.monotonic(), 0
            sender.start()
            try:
                while now < end:
                    n = conn.recv_into(buf)
                    now = time.monotonic()
                    if n == 0:
                        break
                    if now >= start:
                        counted += n
            finally:
                stop.set()
                sender.join(5)
    assert now > start, "the transfer ended before the measurement began"
    return counted / (now - start)


def test_shaping_holds_the_rate_both_ways(
    lab: Lab, record_property: Callable[[str, object], None]
) -> None:
    g, a, tap = lab.guests, lab.addrs, lab.ports["a"]
    before = links(lab.host)
    with Netlink(lab.host) as nl:
        # Guest a sends (its tap's ingress, shaped on an ifb) at 1 MB/s.
        nl.shape(tap, None, Limit(LIMIT))
        nl.shape(tap, None, Limit(LIMIT))  # idempotent
        assert ifb_name(tap) in links(lab.host).values()
        sent = tcp_rate(g["a"], g["b"], a["b"], 2.0, 50_000_000)
        record_property("guest_sends_bytes_per_s", round(sent))
        assert 0.7 * LIMIT <= sent <= 1.3 * LIMIT, f"guest sends at {sent:.0f} B/s"

        # Guest a receives (its tap's egress) at 1 MB/s; it may still send freely.
        nl.shape(tap, Limit(LIMIT), None)
        assert ifb_name(tap) not in links(lab.host).values()
        received = tcp_rate(g["b"], g["a"], a["a"], 2.0, 50_000_000)
        record_property("guest_receives_bytes_per_s", round(received))
        assert 0.7 * LIMIT <= received <= 1.3 * LIMIT, f"guest receives at {received:.0f} B/s"
        shaping = nl.shaping(tap)
        assert (shaping.inbound, shaping.outbound, shaping.ifb) == (LIMIT, None, None)

        nl.unshape(tap)
        nl.unshape(tap)  # idempotent
        free = tcp_rate(g["b"], g["a"], a["a"], 0.5, 2_000_000_000)
        record_property("unshaped_bytes_per_s", round(free))
        assert free > 10 * LIMIT, f"unshaped only {free:.0f} B/s"
    assert links(lab.host) == before
    with ipr(lab.host) as ip:
        port = ip.link_lookup(ifname=tap)[0]
        kinds = {q.get("kind") for q in ip.tc("dump", index=port) if q["index"] == port}
        assert not kinds & {"htb", "ingress"}


def test_shaping_long_tap_name_and_readback(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("s")
    tap = "tap-fifteen-chr"  # 15 bytes: "ifb-" + it would not fit
    with ipr(ns) as ip:
        ip.link("add", ifname=tap, kind="veth", peer={"ifname": "peer0"})
    before = links(ns)
    with Netlink(ns) as nl:
        nl.shape(tap, Limit(2_000_000, peak=4_000_000, burst=64_000), Limit(500_000))
        shaping = nl.shaping(tap)
        assert shaping.ifb == ifb_name(tap) and len(shaping.ifb) <= 15
        assert (shaping.inbound, shaping.inbound_peak) == (2_000_000, 4_000_000)
        assert (shaping.outbound, shaping.outbound_peak) == (500_000, 500_000)
        nl.shape(tap, Limit(3_000_000), Limit(700_000))  # changed in place
        shaping = nl.shaping(tap)
        assert (shaping.inbound, shaping.outbound) == (3_000_000, 700_000)
        nl.unshape(tap)
        assert nl.shaping(tap).ifb is None
    assert links(ns) == before


def test_a_libvirt_style_tap_is_a_port(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("t")
    with Netlink(ns) as nl:
        nl.create_bridge("kvbr-t", bridge_alias("t", "media"))
        with ipr(ns) as ip:
            ip.link("add", ifname="vnet0", kind="tuntap", mode="tap")
            index = ip.link_lookup(ifname="vnet0")[0]
            ip.link("set", index=index, address="fe:54:00:12:6b:b3")
            ip.link("set", index=index, master=ip.link_lookup(ifname="kvbr-t")[0], state="up")
        nl.set_port_isolated("vnet0", True)
        nl.shape("vnet0", Limit(LIMIT), Limit(LIMIT))
        (port,) = nl.ports("kvbr-t")
        assert (port.ifname, port.kind, port.mac, port.isolated) == (
            "vnet0",
            "tun",
            "fe:54:00:12:6b:b3",
            True,
        )
        assert nl.shaping("vnet0").outbound == LIMIT


def test_prune_removes_ifbs_of_vanished_taps(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("p")
    before = links(ns)
    with ipr(ns) as ip:
        for tap in ("vnet1", "vnet2"):
            ip.link("add", ifname=tap, kind="veth", peer={"ifname": f"peer-{tap}"})
    with Netlink(ns) as nl:
        nl.shape("vnet1", None, Limit(LIMIT))
        nl.shape("vnet2", None, Limit(LIMIT))
        with ipr(ns) as ip:
            ip.link("del", index=ip.link_lookup(ifname="vnet1")[0])  # the VM went away
        assert nl.prune_shaping() == ["ifb-vnet1"]
        assert nl.prune_shaping() == []
        assert nl.shaping("vnet2").outbound == LIMIT  # a live tap keeps its limit
        nl.unshape("vnet2")
    with ipr(ns) as ip:
        ip.link("del", index=ip.link_lookup(ifname="vnet2")[0])
    assert links(ns) == before


def test_foreign_ifb_is_refused_and_left_alone(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("i")
    with ipr(ns) as ip:
        ip.link("add", ifname="vnet7", kind="veth", peer={"ifname": "peer7"})
        ip.link("add", ifname=ifb_name("vnet7"), kind="ifb")
    before = links(ns)
    with Netlink(ns) as nl:
        with pytest.raises(HostError, match="'ifb-vnet7'.*left untouched"):
            nl.shape("vnet7", Limit(LIMIT), Limit(LIMIT))
        assert nl.shaping("vnet7").inbound is None  # refused as a whole, nothing half-done
        nl.unshape("vnet7")  # not ours: not deleted either
    assert links(ns) == before


def test_port_vlan_reaches_the_kernel(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    with Netlink(lab.host) as nl:
        if nl.vlan_supported():
            nl.set_port_vlan(lab.ports["a"], 20)
            nl.set_port_vlan(lab.ports["a"], 20)
            index = nl._index(lab.ports["a"])
            assert netlink_vlan._port_vids(nl, index) == {20}
            return
        # Ask the kernel anyway: its refusal must come back as a plain HostError too.
        monkeypatch.setattr(Netlink, "vlan_supported", lambda self: True)
        with pytest.raises(HostError, match="'p-a' in network namespace .* does not support"):
            nl.set_port_vlan(lab.ports["a"], 20)


# --- kvmctl net status -----------------------------------------------------------

LAB_SPEC = """
name: lab
networks:
  vehicle: {bridge: kvbr-lab, subnet: 10.99.7.0/24, isolated: true}
vms:
  cluster: {networks: [{name: vehicle, port_isolated: true}]}
  hud: {networks: [vehicle]}
"""


def test_net_status_names_the_vm_behind_each_port(
    lab: Lab, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_file = os.path.join(str(tmp_path), "lab.yaml")
    with open(spec_file, "w") as f:
        f.write(LAB_SPEC)
    cluster = plan_nics(parse_spec(LAB_SPEC))["cluster"][0]
    with ipr(lab.host) as ip:
        # What libvirt does to a tap: the guest's MAC with the first byte 0xfe.
        port = ip.link_lookup(ifname=lab.ports["a"])[0]
        ip.link("set", index=port, address="fe" + cluster.mac[2:])
    with Netlink(lab.host) as nl:
        nl.shape(lab.ports["b"], Limit(LIMIT), Limit(LIMIT // 2))

    assert main(["net", "status", spec_file, "--netns", lab.host, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (bridge,) = out["bridges"]
    assert (bridge["bridge"], bridge["owned"], bridge["network"]) == ("kvbr-lab", True, "vehicle")
    ports = {p["ifname"]: p for p in bridge["ports"]}
    assert set(ports) == {"p-a", "p-b", "p-c"}
    assert (ports["p-a"]["vm"], ports["p-a"]["network"]) == ("cluster", "vehicle")
    assert (ports["p-a"]["isolated"], ports["p-a"]["isolated_wanted"]) == (False, True)
    assert ports["p-c"]["vm"] is None
    assert (ports["p-b"]["limit_in"], ports["p-b"]["limit_out"]) == (LIMIT, LIMIT // 2)

    # Without a spec: every kvmctl bridge, as a table.
    assert main(["net", "status", "--netns", lab.host]) == 0
    table = capsys.readouterr().out
    assert "kvbr-lab\tlab:vehicle\tup\tp-a" in table
    assert "1 MB/s\t0.5 MB/s" in table
