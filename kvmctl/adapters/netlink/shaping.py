"""Bandwidth limits on a VM's tap with tc over rtnetlink (part of the netlink adapter).

libvirt's own <bandwidth> needs the sfq qdisc, which kernels built without it
refuse; this uses only htb, the ingress qdisc, a u32 match-all filter and the
mirred action, plus an ifb device.

Directions are the guest's: what the guest *receives* leaves the tap (tap
egress), shaped by an htb class on the tap; what it *sends* enters the tap
(tap ingress), where Linux cannot queue, so it is redirected to an ifb device
and shaped by an htb class on the ifb's egress.

Each direction is one htb class of rate = average and ceil = peak (or the
average). htb checks the ceil bucket first, so with a small ceil burst a
class sends its `burst` bytes no faster than `peak`, then settles at
`average`: the meaning of peak and burst in the spec (and in libvirt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kvmctl.adapters.netlink.support import ifb_alias, ifb_name, ifb_tap, link_kind
from kvmctl.errors import HostError, UsageError

if TYPE_CHECKING:
    from kvmctl.adapters.netlink import Netlink

ROOT = 0x10000  # htb qdisc 1:
CLASS = 0x10001  # its one class 1:1, also the default class
INGRESS = 0xFFFF0000  # ingress qdisc ffff:
_TC_H_ROOT = 0xFFFFFFFF
ETH_P_ALL = 0x0003  # linux/if_ether.h: a filter for every protocol
_MTU = 1514  # largest Ethernet frame before GSO; floor for bursts and quantum


class RateLimit(Protocol):
    """bytes/s and bytes, like kvmctl.spec.models.BandwidthLimit."""

    @property
    def average(self) -> int: ...
    @property
    def peak(self) -> int | None: ...
    @property
    def burst(self) -> int | None: ...


@dataclass(frozen=True)
class Limit:
    """A plain RateLimit for callers without a spec at hand."""

    average: int
    peak: int | None = None
    burst: int | None = None


@dataclass(frozen=True)
class HtbClass:
    rate: int  # bytes/s
    ceil: int  # bytes/s
    burst: int  # bytes at up to `ceil` before `rate` applies
    cburst: int  # bytes at line rate before `ceil` applies
    quantum: int


@dataclass(frozen=True)
class Shaping:
    """What is in place on a tap now: rates in bytes/s as seen from the guest."""

    inbound: int | None = None
    inbound_peak: int | None = None
    outbound: int | None = None
    outbound_peak: int | None = None
    ifb: str | None = None


def htb_class(limit: RateLimit) -> HtbClass:
    """The htb class for one direction (pure)."""
    average = limit.average
    if average <= 0:
        raise UsageError(f"bandwidth average must be positive, got {average} bytes/s")
    peak = limit.peak if limit.peak is not None else average
    if peak < average:
        raise UsageError(f"bandwidth peak {peak} is below the average {average} (bytes/s)")
    # 20 ms worth of data, at least a few full frames: smaller buckets make htb
    # wake up for every packet and undershoot the rate.
    burst = limit.burst if limit.burst is not None else max(average // 50, 4 * _MTU)
    burst = max(burst, _MTU)
    # With a peak, the ceil bucket holds about one frame, so a burst drains at
    # `peak`; without one it must not be smaller than the rate bucket, or it
    # would throttle the burst the user asked for.
    cburst = max(peak // 1000, 2 * _MTU) if limit.peak is not None else burst
    # Quantum only matters between sibling classes; keep it inside the range the
    # kernel does not warn about.
    quantum = min(max(average // 10, _MTU), 200_000)
    return HtbClass(average, peak, burst, cburst, quantum)


# --- the two directions ----------------------------------------------------------


def shape(nl: Netlink, ifname: str, inbound: RateLimit | None, outbound: RateLimit | None) -> None:
    inbound_cls = htb_class(inbound) if inbound is not None else None
    outbound_cls = htb_class(outbound) if outbound is not None else None
    tap = nl._index(ifname)
    ipr = nl._ipr
    # The ifb first: a foreign one of that name refuses the whole change up front.
    ifb = _ensure_ifb(nl, ifname) if outbound_cls is not None else None
    with nl._guard("limit the bandwidth of", ifname):
        if ifb is not None and outbound_cls is not None:
            # Shaper before redirect, so no packet passes the ifb unshaped.
            _set_htb(ipr, ifb, outbound_cls)
            _ensure_redirect(ipr, tap, ifb)
        else:
            _clear_ingress(ipr, tap)
        if inbound_cls is not None:
            _set_htb(ipr, tap, inbound_cls)
        else:
            _clear_htb(ipr, tap)
    if ifb is None:
        _delete_ifb(nl, ifname)


def unshape(nl: Netlink, ifname: str) -> None:
    """Remove every limit from the tap and its ifb; nothing there is fine."""
    msg = nl._link(ifname)
    if msg is not None:
        with nl._guard("remove the bandwidth limits of", ifname):
            _clear_htb(nl._ipr, msg["index"])
            _clear_ingress(nl._ipr, msg["index"])
    _delete_ifb(nl, ifname)


def prune(nl: Netlink) -> list[str]:
    """Delete kvmctl ifbs whose tap no longer exists; a tap that died with its VM
    takes its qdiscs along, but not the ifb."""
    with nl._guard("list the interfaces", ""):
        links = nl._ipr.link("dump")
    names = {m.get("ifname") for m in links}
    pruned = []
    for m in links:
        tap = ifb_tap(m.get("ifalias"))
        if link_kind(m) == "ifb" and tap is not None and tap not in names:
            _delete_ifb(nl, tap)
            pruned.append(m.get("ifname"))
    return sorted(pruned)


def read(nl: Netlink, ifname: str) -> Shaping:
    tap = nl._index(ifname)
    ipr = nl._ipr
    with nl._guard("read the bandwidth limits of", ifname):
        inbound = _htb_rates(ipr, tap)
        ifb_msg = nl._link(ifb_name(ifname))
        ifb = None
        outbound: tuple[int, int] | None = None
        if ifb_msg is not None and ifb_msg.get("ifalias") == ifb_alias(ifname):
            if _redirect_target(ipr, tap) == ifb_msg["index"]:
                ifb = ifb_msg.get("ifname")
                outbound = _htb_rates(ipr, ifb_msg["index"])
    return Shaping(
        inbound=inbound[0] if inbound else None,
        inbound_peak=inbound[1] if inbound else None,
        outbound=outbound[0] if outbound else None,
        outbound_peak=outbound[1] if outbound else None,
        ifb=ifb,
    )


# --- htb -------------------------------------------------------------------------


def _root_qdisc(ipr: Any, index: int) -> Any | None:
    for q in ipr.tc("dump", index=index):
        if q["index"] == index and q["parent"] == _TC_H_ROOT:
            return q
    return None


def _is_ours(q: Any) -> bool:
    if q is None or q.get("kind") != "htb" or q["handle"] != ROOT:
        return False
    init = q.get("options").get("TCA_HTB_INIT")
    return init is not None and init["defcls"] == CLASS & 0xFFFF


def _set_htb(ipr: Any, index: int, cls: HtbClass) -> None:
    q = _root_qdisc(ipr, index)
    if not _is_ours(q):
        # htb cannot "replace" itself in place, so a foreign root goes first.
        if q is not None and q.get("kind") == "htb":
            ipr.tc("del", index=index, handle=q["handle"], parent=_TC_H_ROOT)
        ipr.tc("replace", "htb", index, ROOT, default=CLASS & 0xFFFF)
    ipr.tc(
        "replace-class",
        "htb",
        index,
        CLASS,
        parent=ROOT,
        rate=cls.rate,
        ceil=cls.ceil,
        burst=cls.burst,
        cburst=cls.cburst,
        quantum=cls.quantum,
    )


def _clear_htb(ipr: Any, index: int) -> None:
    if _is_ours(_root_qdisc(ipr, index)):
        ipr.tc("del", "htb", index, ROOT)


def _htb_rates(ipr: Any, index: int) -> tuple[int, int] | None:
    if not _is_ours(_root_qdisc(ipr, index)):
        return None
    # "get-class" dumps too; the synchronous "dump-class" of pyroute2 0.9 does not iterate.
    for c in ipr.tc("get-class", index=index):
        if c["handle"] != CLASS:
            continue
        opts = c.get("options")
        parms = opts.get("TCA_HTB_PARMS")
        rate = opts.get("TCA_HTB_RATE64") or parms["rate"]
        ceil = opts.get("TCA_HTB_CEIL64") or parms["ceil"]
        return int(rate), int(ceil)
    return None


# --- ingress -> ifb ----------------------------------------------------------------


def _has_ingress(ipr: Any, index: int) -> bool:
    return any(q["index"] == index and q["handle"] == INGRESS for q in ipr.tc("dump", index=index))


def _redirect_target(ipr: Any, index: int) -> int | None:
    """The ifindex the tap's ingress redirects to, if a kvmctl-style filter is there."""
    if not _has_ingress(ipr, index):
        return None
    for f in ipr.tc("get-filter", index=index, parent=INGRESS):
        opts = f.get("options")
        act = opts.get("TCA_U32_ACT") if opts is not None else None
        prio = act.get("TCA_ACT_PRIO_1") if act is not None else None
        if prio is None or prio.get("TCA_ACT_KIND") != "mirred":
            continue
        parms = prio.get("TCA_ACT_OPTIONS").get("TCA_MIRRED_PARMS")
        return int(parms["ifindex"])
    return None


def _ensure_redirect(ipr: Any, tap: int, ifb: int) -> None:
    if _redirect_target(ipr, tap) == ifb:
        return
    _clear_ingress(ipr, tap)
    ipr.tc("add", "ingress", tap, INGRESS)
    ipr.tc(
        "add-filter",
        "u32",
        tap,
        parent=INGRESS,
        prio=1,
        protocol=ETH_P_ALL,
        target=CLASS,
        keys=["0x0/0x0+0"],  # match every packet
        action=[{"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": ifb}],
    )


def _clear_ingress(ipr: Any, index: int) -> None:
    if _has_ingress(ipr, index):
        ipr.tc("del", "ingress", index, INGRESS)


def _ensure_ifb(nl: Netlink, ifname: str) -> int:
    name, alias = ifb_name(ifname), ifb_alias(ifname)
    msg = nl._link(name)
    if msg is not None and (msg.get("ifalias") != alias or link_kind(msg) != "ifb"):
        raise HostError(
            f"an interface named '{name}' already exists{nl._where} and is not the one kvmctl "
            f"made to shape '{ifname}' (its alias is {msg.get('ifalias')!r}): it was left "
            "untouched; remove it to limit this tap's bandwidth"
        )
    if msg is None:
        with nl._guard("create the ifb device for", ifname):
            nl._ipr.link("add", ifname=name, kind="ifb")
        index = nl._index(name)
        try:
            with nl._guard("create the ifb device for", ifname):
                nl._ipr.link("set", index=index, ifalias=alias)
        except BaseException:
            nl._ipr.link("del", index=index)  # an unmarked ifb would never be cleaned up
            raise
    else:
        index = int(msg["index"])
    with nl._guard("bring up the ifb device for", ifname):
        nl._ipr.link("set", index=index, state="up")
    return index


def _delete_ifb(nl: Netlink, ifname: str) -> None:
    msg = nl._link(ifb_name(ifname))
    if msg is None or msg.get("ifalias") != ifb_alias(ifname):
        return  # not there, or not ours: leave it
    try:
        with nl._guard("delete the ifb device of", ifname):
            nl._ipr.link("del", index=msg["index"])
    except HostError:
        if nl._link(ifb_name(ifname)) is not None:  # else it went away meanwhile: fine
            raise
