#!/usr/bin/env python3
"""Boot time of the built-in test guests under the real libvirtd.

For each flavour, boots a fresh guest N times (a new 64 MiB data disk each
time, so every boot is a first boot that formats /data; display and agent
channel on, like a cockpit VM) and measures, from virDomainCreate:

  ready  the KVMCTL-READY line on the serial console (log file, polled 100x/s)
  agent  the first answered guest-ping
  guest  the guest kernel's own uptime when /init printed READY

Variants run interleaved with the default in every round, so all see the
same machine load, and their ratios are printed side by side:
  pci=noacpi  PCI interrupts routed from the BIOS table instead of ACPI AML,
              which is slow under TCG (costs PCI hotplug, so not the default)
  vmlinuz     the compressed bzImage instead of the PVH vmlinux, for flavours
              whose manifest boots vmlinux (what the PVH boot saves)
Targets under TCG: median ready <= 5 s for test-guest, <= 8 s for test-guest-rt.

The real guest, debian-12 (a disk image with systemd, cloud-init and the
agent), is booted once through `kvmctl apply` and once by a bare `virsh
create` of the same XML, waited for the same way (bench/_debian_boot.py): time
to the agent's first answer and to cloud-init final, as kvmctl / bare ratios
(target <= 1.1x). It takes minutes under TCG; `--flavour` without debian-12
leaves it out.

Usage: .venv/bin/python bench/boot.py [--runs 5] [--flavour F ...] [--no-record]
Figures are appended to bench/RESULTS.md, section "boot".
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import _debian_boot
import libvirt
from _common import REPO, RESULTS, record, result_block

INTRO = (
    "Boot time of the built-in test guests (`bench/boot.py`), from virDomainCreate to "
    "KVMCTL-READY on the serial console and to the first agent answer."
)
TARGETS = {"test-guest": 5.0, "test-guest-rt": 8.0}
REAL = "debian-12"
REAL_TARGET = 1.10  # kvmctl / bare, agent and cloud-init final
UP_RE = re.compile(r"kvmctl-init: up ([0-9.]+)s")


def load_helpers() -> ModuleType:
    """The integration conftest's guest helpers (no pytest needed to use them)."""
    sys.path.insert(0, str(REPO))
    path = REPO / "tests" / "integration" / "conftest.py"
    spec = importlib.util.spec_from_file_location("kvt_guest_helpers", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@dataclass
class Series:
    ready: list[float] = field(default_factory=list)
    agent: list[float] = field(default_factory=list)
    guest: list[float] = field(default_factory=list)


def boot_once(
    h: ModuleType, factory: object, flavour: str, extra: dict[str, str], kernel: Path | None
) -> tuple[float, float, float]:
    spec = h.GuestSpec(
        name=f"kvt-bench-{h.token()}", flavour=flavour, cmdline_extra=extra, display=True,
        kernel=kernel,
    )
    guest = factory.create(spec, start=False)  # type: ignore[attr-defined]
    try:
        needle = f"KVMCTL-READY {spec.name}".encode()
        t0 = time.monotonic()
        guest.dom.create()
        deadline = t0 + h.BOOT_TIMEOUT
        while needle not in guest.serial_bytes():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{spec.name}: not ready after {h.BOOT_TIMEOUT}s")
            time.sleep(0.01)
        ready = time.monotonic() - t0
        guest.wait_agent()
        agent = time.monotonic() - t0
        m = UP_RE.search(guest.serial_text())
        return ready, agent, float(m.group(1)) if m else float("nan")
    finally:
        factory.remove(guest)  # type: ignore[attr-defined]
        factory.guests.remove(guest)  # type: ignore[attr-defined]


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} {max(values):5.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description="test-guest boot times under libvirt")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flavour", action="append", choices=[*sorted(TARGETS), REAL])
    parser.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()
    chosen = args.flavour or [*sorted(TARGETS), REAL]
    if REAL in chosen:
        real_guest(args.no_record)
    flavours = [f for f in chosen if f != REAL]
    if not flavours:
        return 0

    h = load_helpers()
    h.start_event_loop()
    images = h.ensure_images(flavours)
    conn = libvirt.open(h.URI)
    workdir = h.make_workdir()
    pool = h.create_pool(conn, workdir)
    factory = h.GuestFactory(conn, pool, workdir)
    # variant -> (extra cmdline words, kernel to boot instead of the default)
    variants: dict[str, dict[str, tuple[dict[str, str], Path | None]]] = {}
    for f in flavours:
        variants[f] = {"default": ({}, None), "pci=noacpi": ({"pci": "noacpi"}, None)}
        if images[f].kernel.name == "vmlinux":
            variants[f]["vmlinuz"] = ({}, images[f].kernel.with_name("vmlinuz"))
    results: dict[tuple[str, str], Series] = {
        (f, v): Series() for f in flavours for v in variants[f]
    }
    others = conn.numOfDomains()
    def boot(flavour: str, extra: dict[str, str], kernel: Path | None) -> tuple[
        float, float, float
    ]:
        # On shared hosts libvirtd may be restarted under us (host setup runs):
        # reconnect, recreate the transient pool, and boot that one again.
        for attempt in range(3):
            try:
                return boot_once(h, factory, flavour, extra, kernel)
            except (libvirt.libvirtError, h.GuestError) as exc:
                if attempt == 2:
                    raise
                print(f"boot failed ({exc}); retrying on a fresh connection", flush=True)
                factory.conn = h.live_connection(factory.conn)
                factory.pool = h.create_pool(factory.conn, workdir, factory.pool.name())
        raise AssertionError("unreachable")

    try:
        for run in range(args.runs):
            for flavour in flavours:
                for variant, (extra, kernel) in variants[flavour].items():
                    ready, agent, guest = boot(flavour, extra, kernel)
                    s = results[(flavour, variant)]
                    s.ready.append(ready)
                    s.agent.append(agent)
                    s.guest.append(guest)
                    print(
                        f"run {run + 1}/{args.runs} {flavour:14s} {variant:11s} "
                        f"ready {ready:5.2f}s agent {agent:5.2f}s guest uptime {guest:5.2f}s",
                        flush=True,
                    )
    finally:
        try:
            factory.cleanup()
            h.remove_pool(factory.pool)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    header = (
        "| flavour | variant | ready median / max (s) | agent median / max (s) "
        "| guest uptime median (s) | target (ready median) |\n"
        "|---|---|---|---|---|---|\n"
    )
    rows = []
    for (flavour, variant), s in results.items():
        ok = "met" if statistics.median(s.ready) <= TARGETS[flavour] else "MISSED"
        target = f"<= {TARGETS[flavour]:.0f} s {ok}" if variant == "default" else ""
        rows.append(
            f"| {flavour} | {variant} | {fmt(s.ready)} | {fmt(s.agent)} "
            f"| {statistics.median(s.guest):.2f} | {target} |"
        )
    ratios = []
    for flavour in flavours:
        base = statistics.median(results[(flavour, "default")].ready)
        for variant in variants[flavour]:
            if variant != "default":
                alt = statistics.median(results[(flavour, variant)].ready)
                ratios.append(f"{flavour}: {variant} / default ready = {alt / base:.2f}")
    if len(flavours) == 2:
        a = statistics.median(results[("test-guest-rt", "default")].ready)
        b = statistics.median(results[("test-guest", "default")].ready)
        ratios.append(f"test-guest-rt / test-guest ready = {a / b:.2f}")
    table = header + "\n".join(rows)
    print()
    print(table)
    for r in ratios:
        print(r)

    if not args.no_record:
        kernels = ", ".join(
            f"{f} {images[f].kernel_release} ({images[f].kernel.name})" for f in flavours
        )
        body = (
            f"Kernels: {kernels}. Fresh 64 MiB data disk per boot (formatted), VGA display, "
            "256 MiB, 1 vCPU."
        )
        load = f"load {os.getloadavg()[0]:.1f} at end"
        block = result_block(
            f"{args.runs} runs", h.DOMAIN_TYPE, others, load, body, table, ratios
        )
        record("boot", INTRO, block)
        print(f"\nrecorded in {RESULTS.relative_to(REPO)}")
    return 0


def real_guest(no_record: bool) -> None:
    conn = libvirt.open(_debian_boot.URI)
    others = conn.numOfDomains()
    conn.close()
    kvmctl, bare, virt_type = _debian_boot.measure()
    header = "| debian-12 | agent answers (s) | cloud-init final (s) |\n|---|---|---|\n"
    rows = [
        f"| kvmctl apply | {kvmctl.agent:.1f} | {kvmctl.final:.1f} |",
        f"| bare virsh create | {bare.agent:.1f} | {bare.final:.1f} |",
    ]
    ratios = [
        f"kvmctl / bare, agent: {kvmctl.agent / bare.agent:.2f} (target <= {REAL_TARGET:.1f})",
        f"kvmctl / bare, cloud-init final: {kvmctl.final / bare.final:.2f} "
        f"(target <= {REAL_TARGET:.1f})",
    ]
    table = header + "\n".join(rows)
    print(table)
    for r in ratios:
        print(r)
    if no_record:
        return
    body = (
        "The real guest: examples/cockpit-debian.yaml's ivi alone (debian-12, 768 MiB, 1 vCPU, "
        "CPU limit 80 %, no network), one run each (bare first); the same "
        "XML and volumes (overlay on the image, NoCloud seed), the same wait (kvmctl's "
        "ReadyWatch). kvmctl's final is when `apply` returned (volumes and seed included); "
        "the bare one counts from `virsh create`."
    )
    load = f"load {os.getloadavg()[0]:.1f} at end"
    record("boot", INTRO, result_block("1 run", virt_type, others, load, body, table, ratios))
    print(f"\nrecorded in {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    sys.exit(main())
