"""Helpers for cockpit integration tests: run the CLI, snapshot the host, read
what the kernel says about a domain's QEMU threads."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt

from kvmctl.adapters import storage
from kvmctl.host import threads
from kvmctl.planner.networks import parse_alias

URI = os.environ.get("KVMCTL_TEST_URI", "qemu:///system")
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cockpit.yaml"


def kvmctl(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, as a user runs it (with `env`, in exactly
    that environment)."""
    run = subprocess.run(
        [sys.executable, "-m", "kvmctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env if env is not None else cli_env(),
    )
    assert "Traceback" not in run.stderr, run.stderr
    return run


def kvmctl_popen(
    *args: str, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[Any]:
    """The real CLI started in the background, its output where `popen`
    (stdout=, stderr=, text=) sends it; with `env`, in exactly that environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "kvmctl.cli", *args],
        cwd=REPO,
        env=env if env is not None else cli_env(),
        **popen,
    )


def cli_env(uri: str | None = URI, **extra: str) -> dict[str, str]:
    """This process's environment with `uri` as LIBVIRT_DEFAULT_URI (None:
    without one, as a user who set none), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    if uri is not None:
        env["LIBVIRT_DEFAULT_URI"] = uri
    return {**env, **extra}


def kvmctl_json(*args: str) -> Any:
    run = kvmctl(*args, "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def host_snapshot(prefix: str) -> dict[str, list[str]]:
    """Domains and volumes whose names start with `prefix`, and every network link."""
    return {**libvirt_objects(prefix), "links": sorted(os.listdir("/sys/class/net"))}


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


def worker_housekeeping_cpu() -> int:
    """The housekeeping CPU for this pytest process's sets. With the default,
    CPU 0, every shared vCPU of every set lands on CPU 1 of a 2-CPU host while
    the host's own work leaves CPU 0 half idle; in the parallel part each
    pytest-xdist worker `gwN` keeps CPU N instead (modulo the CPUs it may use),
    so the two workers' guests run on different CPUs. Outside xdist, CPU 0.
    Placement tests compare with the plan, which follows the spec either way."""
    cpus = sorted(os.sched_getaffinity(0))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return cpus[int(worker) % len(cpus)] if worker.isdigit() else cpus[0]


def write_spec(tmp: Path, text: str, name: str = "cockpit.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def cluster_and_ivi(set_name: str) -> str:
    """The two-VM cockpit of the operate-verb tests (exporter, top, screens): a
    hugepage-backed cluster and an IVI capped at 50 % of a CPU, each with a
    display and ready once its serial console says so. The text ends inside
    `vms:`, so a test may add VMs after it."""
    return f"""
name: {set_name}
vms:
  cluster:
    role: instrument-cluster
    memory: {{size: 128MiB, hugepages: 2MiB}}
    disk: {{size: 32MiB}}
    display: {{width: 1280, height: 480}}
    ready: {{probe: "serial:KVMCTL-READY cluster", timeout: 90s}}
  ivi:
    role: infotainment
    cpu: {{shares: 512, limit: 50%}}
    memory: {{size: 128MiB}}
    disk: {{size: 32MiB}}
    display: {{width: 1024, height: 600}}
    ready: {{probe: "serial:KVMCTL-READY ivi", timeout: 90s}}
"""


def renamed_example(set_name: str, bridges: tuple[str, str]) -> str:
    """examples/cockpit.yaml under a set name and bridge names of its own
    (vehicle, media), so a test never touches a demo cockpit the user left
    running, nor its bridges."""
    return (
        EXAMPLE.read_text()
        .replace("name: demo-cockpit", f"name: {set_name}")
        .replace("kvbr-vehicle", bridges[0])
        .replace("kvbr-media", bridges[1])
    )


def refresh_pool(pool: libvirt.virStoragePool, timeout: float = 10) -> None:
    """kvmctl's refresh (it waits out another client's volume job); after
    `timeout`, a sweep goes on with what libvirt knows."""
    with contextlib.suppress(libvirt.libvirtError):
        storage.refresh_pool(pool, wait=timeout)


def set_snapshot(prefix: str) -> dict[str, list[str]]:
    """Like `host_snapshot(prefix)`, but safe beside tests running alongside:
    only links named with `prefix` count."""
    links = sorted(link for link in os.listdir("/sys/class/net") if link.startswith(prefix))
    return {**libvirt_objects(prefix), "links": links}


def domain_states(prefix: str, uri: str = URI) -> dict[str, int]:
    """State of each domain named with `prefix` on `uri` (this host or a lab)."""
    conn = libvirt.open(uri)
    try:
        states = {}
        for d in conn.listAllDomains():
            if not d.name().startswith(prefix):
                continue
            try:
                states[d.name()] = d.state()[0]
            except libvirt.libvirtError as e:
                # Undefined between the listing and the read (a transient guest
                # going, a failed incoming migration cleaned up): it is gone.
                if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
        return states
    finally:
        conn.close()


def libvirt_objects(prefix: str, uri: str = URI) -> dict[str, list[str]]:
    """Domains and volumes named with `prefix`; a pool busy with someone else's
    volume is waited for instead of failing the refresh."""
    conn = libvirt.open(uri)
    try:
        domains = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(prefix))
        volumes: list[str] = []
        for pool in conn.listAllStoragePools():
            try:
                if not pool.isActive():
                    continue
                refresh_pool(pool)
                names = pool.listVolumes()
            except libvirt.libvirtError:
                continue  # a transient pool of another test, gone meanwhile
            volumes += [f"{pool.name()}/{v}" for v in names if v.startswith(prefix)]
    finally:
        conn.close()
    return {"domains": domains, "volumes": sorted(volumes)}


def sweep(prefix: str, uri: str = URI) -> list[str]:
    """Last-resort cleanup: stop and undefine every domain named with `prefix`,
    delete its volumes in pool `kvmctl` and, on this host, the links named with
    `prefix` or kvmctl's bridges of a set named so (a spec may name its bridge
    freely: kvmctl marks it by its alias). Returns what it removed (empty when
    `kvmctl destroy` left nothing behind). `uri` may be a lab host's."""
    from pyroute2 import IPRoute

    removed: list[str] = []
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        if uri == URI:
            raise
        return removed  # a lab that is gone took everything with it
    try:
        for dom in conn.listAllDomains():
            if not dom.name().startswith(prefix):
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
                removed.append(f"domain {dom.name()}")
            except libvirt.libvirtError:
                pass
        try:
            pool = conn.storagePoolLookupByName("kvmctl")
            if pool.isActive():
                refresh_pool(pool)
                for vol in pool.listAllVolumes(0):
                    if vol.name().startswith(prefix):
                        vol.delete(0)
                        removed.append(f"volume {vol.name()}")
        except libvirt.libvirtError:
            pass
    finally:
        conn.close()
    if uri != URI:
        return removed
    with IPRoute() as ipr:
        links = sorted((m.get("ifname"), m.get("ifalias")) for m in ipr.get_links())
        for link, alias in links:
            owner = parse_alias(alias)
            if link.startswith(prefix) or (owner is not None and owner[0].startswith(prefix)):
                found = ipr.link_lookup(ifname=link)  # again: deleting one may take others
                if found:
                    ipr.link("del", index=found[0])
                    removed.append(f"link {link}")
    return removed
