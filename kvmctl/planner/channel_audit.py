"""The audit rule of channels (pure): a live domain carries exactly the
shared regions, kvmctl serial ports and vsock device its plan declares."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmctl.planner.channels import (
    SERIAL_PORT_PREFIX,
    Device,
    SerialPort,
    ShmRegion,
)
from kvmctl.planner.drift import Check
from kvmctl.spec.channels import MIB
from kvmctl.xml.base import parse_xml
from kvmctl.xml.chardev import Channel as XmlChannel
from kvmctl.xml.devices import Shmem, Vsock

if TYPE_CHECKING:
    from kvmctl.planner.plan import VmPlan


def device_checks(plan: VmPlan, live_xml: str) -> list[Check]:
    """Shared regions, kvmctl's serial ports and the vsock device of a live
    domain (its XML as libvirt gives it) against the plan, one check each;
    a device the plan does not declare fails a check of its own."""
    shmems, ports, vsock = _live_devices(live_xml)
    want = plan.channels
    checks: list[Check] = []

    def compare(kind: str, planned: dict[str, tuple[str, str]], live: dict[str, str]) -> None:
        for key, (label, desc) in planned.items():
            got = live.pop(key, "absent")
            checks.append(Check(plan.name, f"{kind} {label}", desc, got, got == desc))
        for key, got in sorted(live.items()):
            checks.append(Check(plan.name, f"{kind} {key}", "absent", got, False))

    def planned(items: tuple[Device, ...]) -> dict[str, tuple[str, str]]:
        return {key: (label, desc) for _, key, label, desc in map(device_key, items)}

    compare("shmem", planned(want.regions), shmems)
    compare("serial", planned(want.serials), ports)
    compare("vsock", planned(want.vsocks[:1]), vsock)
    return checks



def device_key(device: Device) -> tuple[str, str, str, str]:
    """(kind, key among a domain's live devices, label in the audit,
    description) of a planned device."""
    if isinstance(device, ShmRegion):
        return "shmem", device.name, device.channel, _shm(device.name, device.size // MIB)
    if isinstance(device, SerialPort):
        return "serial", device.port, device.channel, _serial(device.port, device.socket)
    return "vsock", "cid", "cid", _cid(device.cid)


def carries(device: Device, live_xml: str) -> bool:
    """Whether a domain's live XML has the planned device, as planned."""
    kind, key, _, desc = device_key(device)
    shmems, ports, vsock = _live_devices(live_xml)
    return {"shmem": shmems, "serial": ports, "vsock": vsock}[kind].get(key) == desc


def _live_devices(live_xml: str) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(shmem name, kvmctl serial port, "cid") -> description, for the devices
    of a domain's XML; elements the models cannot read count as present."""
    devices = parse_xml(live_xml).find("devices")
    shmems: dict[str, str] = {}
    ports: dict[str, str] = {}
    vsock: dict[str, str] = {}
    for el in [] if devices is None else devices:
        try:
            if el.tag == "shmem":
                shm = Shmem.from_element(el)
                shmems[shm.name] = _shm(shm.name, shm.size_mib)
            elif el.tag == "channel":
                chan = XmlChannel.from_element(el)
                if chan.target_name and chan.target_name.startswith(SERIAL_PORT_PREFIX):
                    ports[chan.target_name] = _serial(chan.target_name, chan.source_path)
            elif el.tag == "vsock":
                vsock["cid"] = _cid(Vsock.from_element(el).cid_address)
        except ValueError as err:
            key = el.get("name") or el.tag
            (shmems if el.tag == "shmem" else vsock if el.tag == "vsock" else ports)[key] = (
                f"unreadable ({err})"
            )
    return shmems, ports, vsock


def _shm(name: str, size_mib: int | None) -> str:
    return f"{name} {size_mib}MiB"


def _serial(port: str, socket: str | None) -> str:
    return f"{port} at {socket}"


def _cid(cid: int | None) -> str:
    return f"CID {cid if cid is not None else 'auto'}"
