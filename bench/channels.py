"""Guest-to-guest round trip: a shared region (ivshmem) vs TCP on the bridge, one run.

    .venv/bin/python bench/channels.py [--round-trips 2000]

Two test guests (128 MiB, shared CPUs) are applied with a 1 MiB shared region
between them and a NIC each on one bridge. The same static program
(bench/pingpong.c, built here with the host's cc and copied into both guests
through the agent) bounces a 4-byte sequence number: over the region, by
spinning on a word of the mmapped BAR (and again with
both sides napping between looks, so their vCPUs idle as TCP's do); over TCP, as one TCP_NODELAY
connection between the guests' addresses on the bridge. Neither path starts
a process per message. Median, p99 and mean round trip are the pinger's
clock; the ratio is TCP over shared memory. Absolute TCG figures are not
representative; the comparison is.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt  # noqa: E402

from bench._common import record  # noqa: E402
from kvmctl import cockpit  # noqa: E402
from tests.integration.guest_agent import exec_start  # noqa: E402
from tests.integration.ops_helpers import (  # noqa: E402
    guest_run,
    guest_status,
    on_domain,
    tool,
    wait_until,
)

URI = "qemu:///system"
SOURCE = Path(__file__).resolve().parent / "pingpong.c"
GUEST_BIN = "/tmp/pingpong"
PORT = 5701
# The second shared-region run: the waiting side sleeps this long between two
# looks (its vCPU idles) instead of spinning.
POLL_SLEEP_US = 100
POLL = str(POLL_SLEEP_US)
CHUNK = 32 * 1024  # bytes of the program per guest-exec (its stdin travels as base64)
VM = (
    "{cpu: {placement: shared}, memory: {size: 128MiB}, image: {builtin: test-guest}, "
    "disk: {size: 32MiB}, networks: [bus], ready: {probe: agent, timeout: 180s}}"
)
SPEC = """\
name: {name}
networks:
  bus: {{bridge: {bridge}, subnet: 10.253.{net}.0/24}}
vms:
  a: {vm}
  b: {vm}
channels:
  - {{kind: shm, name: pp, size: 1MiB, members: [a, b]}}
"""


def build(out: Path) -> None:
    subprocess.run(
        ["cc", "-static", "-O2", "-s", "-o", str(out), str(SOURCE)], check=True, timeout=120
    )


def push(domain: str, program: bytes) -> None:
    """The program into the guest's /tmp, a chunk per guest-exec."""
    for i in range(0, len(program), CHUNK):
        argv = ["-c", f"cat {'>' if i == 0 else '>>'} {GUEST_BIN}"]
        start = partial(exec_start, path="/bin/sh", args=argv, stdin=program[i : i + CHUNK])
        pid = wait_until(partial(_try, domain, start), 60, f"{domain}'s agent to take a chunk")
        wait_until(partial(guest_status, domain, pid), 60, f"{domain} to write a chunk")
    guest_run(domain, "/bin/chmod", "755", GUEST_BIN)


def _try(domain: str, start: Callable[[libvirt.virDomain], int]) -> int | None:
    try:
        return on_domain(domain, URI, start)
    except libvirt.libvirtError:
        return None  # the agent may be busy with the previous chunk


def address(domain: str) -> str:
    addrs = tool(domain, "info")["addrs"]  # e.g. eth0=10.253.7.2/24
    match = re.search(r"=(\d+\.\d+\.\d+\.\d+)/", addrs)
    assert match, f"{domain}: no address in {addrs!r}"
    return match.group(1)


def figures(out: str) -> dict[str, float]:
    return {k: float(v) for k, v in (w.split("=") for w in out.split())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-trips", type=int, default=2000)
    args = ap.parse_args()
    n = str(args.round_trips)

    token = secrets.token_hex(2)
    name = f"kvt-bench-ch-{token}"
    a, b = f"{name}-a", f"{name}-b"
    work = Path(tempfile.mkdtemp(prefix="kvmctl-bench-ch-"))
    spec = work / "spec.yaml"
    spec.write_text(
        SPEC.format(name=name, bridge=f"kvt-bch{token}", net=secrets.randbelow(200) + 20, vm=VM)
    )
    program = work / "pingpong"
    build(program)
    load_start = os.getloadavg()[0]
    results: dict[str, dict[str, float]] = {}
    try:
        t = time.monotonic()
        cockpit.apply(spec, URI)
        print(f"set {name} applied in {time.monotonic() - t:.1f} s")
        for dom in (a, b):
            push(dom, program.read_bytes())

        for label, sleep in (("shared region", "0"), (f"shared, {POLL_SLEEP_US} us naps", POLL)):
            guest_run(a, GUEST_BIN, "shm", "reset")
            guest_run(b, GUEST_BIN, "shm", "pong", n, sleep, wait=False)
            out = guest_run(a, GUEST_BIN, "shm", "ping", n, sleep, timeout=900)
            results[label] = figures(out)

        guest_run(b, GUEST_BIN, "tcp", "pong", str(PORT), n, wait=False)
        results["TCP on the bridge"] = figures(
            guest_run(a, GUEST_BIN, "tcp", "ping", address(b), str(PORT), n, timeout=600)
        )
    finally:
        cockpit.destroy(spec, URI)

    lines = [f"{'path':<26} {'median us':>10} {'p99 us':>10} {'mean us':>10}"]
    for path, f in results.items():
        lines.append(
            f"{path:<26} {f['median_us']:>10.1f} {f['p99_us']:>10.1f} {f['mean_us']:>10.1f}"
        )
    tcp = results["TCP on the bridge"]
    for path, shm in results.items():
        if path != "TCP on the bridge":
            lines.append(
                f"TCP / {path}: {tcp['median_us'] / shm['median_us']:.2f}x (median), "
                f"{tcp['mean_us'] / shm['mean_us']:.2f}x (mean)"
            )
    lines.append(f"{int(tcp['n'])} round trips each (after 10 of warm-up)")
    block = "\n".join(lines)
    print(block)
    head = (
        f"### {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, TCG, {os.cpu_count()} CPUs, "
        f"{os.uname().nodename}, load {load_start:.1f} at start / {os.getloadavg()[0]:.1f} at end"
    )
    record(
        "channels",
        "Guest-to-guest round trip between two test guests: a 4-byte sequence number over "
        "a shared region (ivshmem, polled) vs over one TCP connection on the bridge "
        "(bench/pingpong.c in both guests, no process per message). One run.",
        f"{head}\n\n```\n{block}\n```\n",
    )


if __name__ == "__main__":
    main()
