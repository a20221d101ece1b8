"""Helpers for cockpit integration tests: run the CLI, snapshot the host, read
what the kernel says about a domain's QEMU threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt

from kvmctl.host import threads

URI = os.environ.get("KVMCTL_TEST_URI", "qemu:///system")
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cockpit.yaml"


def kvmctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it."""
    run = subprocess.run(
        [sys.executable, "-m", "kvmctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "LIBVIRT_DEFAULT_URI": URI},
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


def kvmctl_json(*args: str) -> Any:
    run = kvmctl(*args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def host_snapshot(prefix: str) -> dict[str, list[str]]:
    """Domains, kvmctl volumes and network links whose names start with `prefix`."""
    conn = libvirt.open(URI)
    try:
        domains = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix))
        volumes: list[str] = []
        for pool in conn.listAllStoragePools():
            if pool.isActive():
                pool.refresh(0)
                volumes += [f"{pool.name()}/{v}" for v in pool.listVolumes() if v.startswith(prefix)]
    finally:
        conn.close()
    links = sorted(os.listdir("/sys/class/net"))
    return {"domains": domains, "volumes": sorted(volumes), "links": links}


def qemu(domain: str) -> threads.QemuProcess:
    pid = threads.qemu_pid(domain)
    assert pid is not None, f"no QEMU process for {domain}"
    return threads.inspect(pid)


def cgroup_value(domain: str, name: str, vcpu: bool = True) -> int:
    proc = qemu(domain)
    directory = threads.cgroup_dir(proc.vcpus[0].tid, "cpu", proc.pid)
    assert directory is not None
    if not vcpu:
        directory = directory.parent
    return int((directory / name).read_text())


def write_spec(tmp: Path, text: str, name: str = "cockpit.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path
