"""What a scrape of `kvmctl exporter` costs next to reading the same status
another way, measured side by side in one run on one applied two-VM set:

- a scrape of /metrics (the exporter's one connection, re-planned per scrape,
  plus the audit and libvirt's CPU statistics);
- `overview()` in process (a new session per call: connection, host probe);
- `kvmctl status --json` as a user runs it (a new process per call).

    .venv/bin/python bench/exporter.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kvmctl.observe.overview import overview

URI = "qemu:///system"
REPO = Path(__file__).resolve().parents[1]
SPEC = """
name: {name}
vms:
  a:
    memory: {{size: 128MiB, hugepages: 2MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: "serial:KVMCTL-READY a", timeout: 90s}}
  b:
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kvmctl.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "LIBVIRT_DEFAULT_URI": URI},
        check=True,
    )


def timed(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    rounds = parser.parse_args().rounds
    name = f"kvb-ex-{secrets.token_hex(2)}"
    spec = Path(tempfile.mkdtemp(prefix="kvb-ex-")) / "cockpit.yaml"
    spec.write_text(SPEC.format(name=name))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/metrics"
    cli("apply", str(spec))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kvmctl.cli",
            "exporter",
            str(spec),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        cwd=REPO,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=30).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        results = {
            "scrape /metrics": timed(
                lambda: urllib.request.urlopen(url, timeout=30).read(), rounds
            ),
            "overview() in process": timed(lambda: overview(spec, URI), max(rounds // 4, 3)),
            "kvmctl status --json": timed(lambda: cli("status", str(spec), "--json"), 5),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        cli("destroy", str(spec))
    base = statistics.median(results["scrape /metrics"])
    print(f"two VMs (one hugepage-backed, one agent-probed), exporter exit {proc.returncode}")
    for label, times in results.items():
        med = statistics.median(times)
        print(f"{label:24s} median {med * 1000:8.1f} ms  n={len(times):3d}  x{med / base:5.1f}")


if __name__ == "__main__":
    main()
