"""Live migration: kvmctl's policy vs plain `virsh migrate --live` defaults, in one run.

    .venv/bin/python bench/migrate.py [--dirty-mbps 64] [--bandwidth 32] [--patience 90]

One 256 MiB hugepage-backed test guest (shared CPU, 64 MiB disk) is applied
here and moved twice to a lab host (kvmctl.testing) that shares this host's
volume directory (as over NFS: no disk copied), then four times to a lab
with storage of its own (disk copied over NBD):

- idle guest, `kvmctl migrate` (its policy: downtime limit by criticality,
  auto-converge, post-copy when pre-copy stops converging);
- idle guest, the plain job `virsh migrate --live --p2p --persistent
  --undefinesource --copy-storage-all` runs (same flags, libvirt defaults);
- the same two with the guest dirtying `--dirty-mbps` MB/s of memory, both
  capped at `--bandwidth` MiB/s so that the stream is slower than the dirtying:
  the plain job is watched for `--patience` seconds and aborted if it has not
  converged by then;
- idle guest on shared storage, `kvmctl migrate` and the plain job (no disk
  copy, `--unsafe` for libvirt's file system type check, which kvmctl's
  shared-storage probe answers itself).

Times and downtimes are libvirt's completed-job statistics on the
destination. Absolute TCG figures are not representative; the comparison is.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import libvirt  # noqa: E402

from bench._common import record  # noqa: E402
from kvmctl import cockpit, migration  # noqa: E402
from kvmctl.planner.migration import Overrides  # noqa: E402
from kvmctl.testing.lab import LabHost, LabState  # noqa: E402
from tests.integration.migration_helpers import plain_move  # noqa: E402
from tests.integration.ops_helpers import tool  # noqa: E402

SPEC = """\
name: {name}
host: {{housekeeping_cpus: [0]}}
vms:
  a:
    cpu: {{placement: shared}}
    memory: {{size: 256MiB, hugepages: 2MiB}}
    image: {{builtin: test-guest}}
    disk: {{size: 64MiB}}
    ready: {{probe: agent, timeout: 90s}}
"""
SOURCE = "qemu:///system"


def remove_from_lab(lab: LabState, domain: str) -> None:
    conn = libvirt.open(lab.uri)
    try:
        try:
            dom = conn.lookupByName(domain)
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError:
            pass
        pool = conn.storagePoolLookupByName("kvmctl")
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith(domain):
                vol.delete(0)
    finally:
        conn.close()


def kvmctl_move(
    spec: Path, lab: LabState, bandwidth: int | None, copy_storage: bool
) -> dict[str, object]:
    request = migration.Request(
        dest_uri=lab.uri,
        migrate_uri=None,
        copy_storage=copy_storage,
        overrides=Overrides(bandwidth_mibps=bandwidth),
    )
    report = migration.migrate(spec, ["a"], SOURCE, request, insecure=True)
    r = report.results[0]
    return {
        "converged": True,
        "seconds": r.seconds,
        "downtime_ms": r.downtime_ms,
        "iterations": r.iterations,
        "postcopy": r.postcopy,
    }


def one_case(
    spec: Path,
    name: str,
    lab: LabState,
    dirty: int,
    bandwidth: int | None,
    patience: float,
    copy_storage: bool = True,
) -> tuple[dict, dict]:
    domain = f"{name}-a"
    out = []
    for mover in ("kvmctl", "plain"):
        cockpit.apply(spec, SOURCE)
        if dirty:
            tool(domain, "dirty", str(dirty), "600", wait=False)
            time.sleep(3)
        try:
            if mover == "kvmctl":
                out.append(kvmctl_move(spec, lab, bandwidth, copy_storage))
            else:
                out.append(plain_move(domain, lab, bandwidth, patience, copy_storage))
        finally:
            cockpit.destroy(spec, SOURCE)
            remove_from_lab(lab, domain)
    return out[0], out[1]


def fmt(r: dict) -> str:
    if not r.get("converged"):
        detail = r.get("error") or (
            f"still iterating after {r['seconds']:.0f} s (pass {r.get('iterations')}, "
            f"{r.get('remaining_mib')} MiB left), aborted"
        )
        return f"did not converge: {detail}"
    extra = ", post-copy" if r.get("postcopy") else ""
    return (
        f"total {r['seconds']:.2f} s, downtime {r['downtime_ms']} ms, "
        f"{r['iterations']} passes{extra}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dirty-mbps", type=int, default=64)
    ap.add_argument("--bandwidth", type=int, default=32, help="MiB/s cap in the dirty case")
    ap.add_argument("--patience", type=float, default=90.0)
    args = ap.parse_args()
    name = f"kvt-bench-mig-{secrets.token_hex(2)}"
    spec = Path(f"/tmp/{name}.yaml")
    spec.write_text(SPEC.format(name=name))
    try:
        with LabHost(shared_storage=True) as lab:
            shared = one_case(spec, name, lab, 0, None, args.patience, copy_storage=False)
            print(f"idle, shared: kvmctl {fmt(shared[0])}; plain {fmt(shared[1])}", flush=True)
        with LabHost() as lab:
            idle = one_case(spec, name, lab, 0, None, args.patience)
            print(f"idle: kvmctl {fmt(idle[0])}; plain {fmt(idle[1])}", flush=True)
            dirty = one_case(spec, name, lab, args.dirty_mbps, args.bandwidth, args.patience)
            print(f"dirty: kvmctl {fmt(dirty[0])}; plain {fmt(dirty[1])}", flush=True)
    finally:
        spec.unlink(missing_ok=True)
    lines = [
        f"idle 256 MiB hugepage guest, kvmctl policy: {fmt(idle[0])}",
        f"idle 256 MiB hugepage guest, plain virsh defaults: {fmt(idle[1])}",
        f"dirtying {args.dirty_mbps} MB/s, {args.bandwidth} MiB/s cap, kvmctl policy: "
        f"{fmt(dirty[0])}",
        f"dirtying {args.dirty_mbps} MB/s, {args.bandwidth} MiB/s cap, plain virsh defaults: "
        f"{fmt(dirty[1])}",
    ]
    lines += [
        f"idle 256 MiB hugepage guest, shared storage, kvmctl policy: {fmt(shared[0])}",
        f"idle 256 MiB hugepage guest, shared storage, plain virsh defaults: {fmt(shared[1])}",
    ]
    for label, pair in (("disk copied", idle), ("shared storage", shared)):
        if pair[0].get("downtime_ms") and pair[1].get("downtime_ms"):
            lines.append(
                f"idle downtime kvmctl / plain, {label}: "
                f"{pair[0]['downtime_ms'] / pair[1]['downtime_ms']:.2f}"
            )
    block = "\n".join(lines)
    print(block)
    head = (
        f"### {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, TCG, "
        f"load {os.getloadavg()[0]:.1f} at the end"
    )
    record(
        "migrate",
        "Live migration to a lab host (kvmctl.testing), disks copied over NBD unless "
        "shared; libvirt's completed-job statistics on the destination.",
        f"{head}\n\n```\n{block}\n```\n",
    )


if __name__ == "__main__":
    main()
