"""Group snapshots vs a sequential per-VM loop, measured side by side in one run.

    .venv/bin/python bench/snapshot.py [--vms 4] [--rounds 3]

A set of small shared VMs (128 MiB, test-guest, counter running) is applied,
then each round takes, on the same set:

- a group snapshot with memory (`kvmctl snapshot create --all`): guest file
  systems frozen, all VMs paused in parallel, internal snapshots taken in
  parallel, all resumed, thawed; its pause window is first pause asked for to
  last resume done;
- the same as a disk-only group (`--disk-only`);
- a sequential loop, one `virDomainSnapshotCreateXML` per VM with the same
  snapshot XML and flags (disk-only: overlay made first, as kvmctl does), as
  a script without a group operation would do it: with memory (libvirt
  pauses each VM for its own snapshot) and disk-only. Its spread is the first
  VM's snapshot start to the last VM's, i.e. how far apart the members'
  states are; its total is first start to last end;
- the same loop through kvmctl's per-VM API (`kvmctl snapshot create FILE VM
  NAME` once per VM), which opens a session per call.

Every snapshot is deleted again (disk-only ones by block commit) before the
next measurement. Medians over the rounds are printed, with the ratios the
targets are stated in; absolute TCG times are not representative.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmctl import cockpit  # noqa: E402
from kvmctl import snapshot as snap  # noqa: E402
from kvmctl.adapters.snapshots import SnapshotOps  # noqa: E402
from kvmctl.planner.snapshot import Tag  # noqa: E402
from kvmctl.snapshot import _common as snap_common  # noqa: E402
from kvmctl.snapshot import single as snap_single  # noqa: E402
from kvmctl.spec import load_spec  # noqa: E402

URI = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")


def spec_text(name: str, vms: int) -> str:
    out = [f"name: {name}", "host:", "  housekeeping_cpus: [0]", "vms:"]
    for i in range(vms):
        out += [
            f"  vm{i}:",
            "    cpu: {placement: shared}",
            "    memory: {size: 128MiB}",
            "    image: {builtin: test-guest}",
            "    disk: {size: 64MiB}",
            "    ready: {probe: agent, timeout: 90s}",
        ]
    return "\n".join(out) + "\n"


def sequential(
    session: cockpit.Session, ops: SnapshotOps, name: str, disk_only: bool
) -> dict[str, float]:
    """One snapshot per VM, one after the other, each exactly as kvmctl takes
    it (for disk-only: overlay made first, then opened by the snapshot); ms."""
    starts, ends, each, prep = [], [], [], []
    t_first = time.monotonic()
    for vp in session.plan.vms.values():
        tag = Tag(session.plan.set_name, vp.name, session.plan.spec_hash)
        where = snap_common._targets(ops, vp, disk_only)
        xml = snap_common._snapshot_xml(name, tag, where)
        t0 = time.monotonic()
        made = snap_common._precreate(ops, xml, where)
        t1 = time.monotonic()
        ops.create(vp.domain, xml, disk_only, reuse=bool(made))
        t2 = time.monotonic()
        starts.append(t1)
        ends.append(t2)
        each.append((t2 - t1) * 1000)
        prep.append((t1 - t0) * 1000)
    return {
        "spread_ms": (max(starts) - min(starts)) * 1000,
        "total_ms": (max(ends) - t_first) * 1000,
        "each_ms": statistics.median(each),
        "prep_ms": statistics.median(prep),
    }


def kvmctl_loop(
    spec: Path, session: cockpit.Session, name: str, disk_only: bool
) -> dict[str, float]:
    """The same loop through kvmctl's per-VM API (what `kvmctl snapshot create
    FILE VM NAME` does once per VM): each call opens its own session."""
    starts, ends = [], []
    for vm in session.plan.vms:
        t0 = time.monotonic()
        snap.create(spec, URI, vm, name, disk_only=disk_only)
        ends.append(time.monotonic())
        starts.append(t0)
    return {
        "spread_ms": (max(starts) - min(starts)) * 1000,
        "total_ms": (max(ends) - min(starts)) * 1000,
    }


def drop(spec: Path, session: cockpit.Session, ops: SnapshotOps, name: str) -> None:
    for vp in session.plan.vms.values():
        for r in snap_common._records(ops, vp) or []:
            if r.name == name:
                snap_single._delete_one(ops, vp, r, lambda _v, _w: None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vms", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    set_name = f"kvt-bench-snap-{secrets.token_hex(2)}"
    work = Path(tempfile.mkdtemp(prefix="kvmctl-bench-snap-"))
    os.environ["KVMCTL_SNAPSHOT_DIR"] = str(work / "manifests")
    spec = work / "spec.yaml"
    spec.write_text(spec_text(set_name, args.vms))
    print(f"set {set_name}: {args.vms} shared VMs of 128 MiB, {args.rounds} rounds")
    results: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    try:
        t = time.monotonic()
        cockpit.apply(spec, URI)
        print(f"applied in {time.monotonic() - t:.1f} s")
        session, ops = snap_common._open(load_spec(spec), URI)
        for vp in session.plan.vms.values():
            session.virt.agent(
                vp.domain,
                "guest-exec",
                {"path": "/usr/bin/kvmctl-tool", "arg": ["counter", "start"]},
            )  # type: ignore[union-attr]
        time.sleep(1)
        for rnd in range(args.rounds):
            for disk_only, label in ((False, "memory"), (True, "disk-only")):
                name = f"b{rnd}{label[0]}"
                g = snap.create_group(spec, URI, f"g{name}", disk_only=disk_only)
                note(f"group {label} pause window ms", g.manifest.pause_window_ms)
                note(f"group {label} pause spread ms", g.manifest.pause_spread_ms)
                note(f"group {label} freeze ms", g.freeze_ms)
                note(f"group {label} thaw ms", g.thaw_ms)
                snap.delete_group(spec, URI, f"g{name}")
                s = sequential(session, ops, f"s{name}", disk_only)
                note(f"sequential {label} spread ms", s["spread_ms"])
                note(f"sequential {label} total ms", s["total_ms"])
                note(f"single VM {label} snapshot ms", s["each_ms"])
                if disk_only:
                    note("single VM overlay creation ms (before the snapshot)", s["prep_ms"])
                drop(spec, session, ops, f"s{name}")
                k = kvmctl_loop(spec, session, f"k{name}", disk_only)
                note(f"kvmctl per-VM loop {label} spread ms", k["spread_ms"])
                note(f"kvmctl per-VM loop {label} total ms", k["total_ms"])
                drop(spec, session, ops, f"k{name}")
            print(f"round {rnd + 1} done")
    finally:
        cockpit.destroy(spec, URI)

    med = {k: statistics.median(v) for k, v in results.items()}
    width = max(len(k) for k in med)
    print()
    for key, value in med.items():
        runs = " ".join(f"{x:.1f}" for x in results[key])
        print(f"{key:<{width}}  {value:9.1f}   ({runs})")
    window = med["group memory pause window ms"]
    print()
    print(
        f"memory group pause window / sequential libvirt loop total: "
        f"{window / med['sequential memory total ms']:.2f}; / kvmctl per-VM loop total: "
        f"{window / med['kvmctl per-VM loop memory total ms']:.2f} (target <= 0.70)"
    )
    print(
        f"disk-only group pause window: {med['group disk-only pause window ms']:.1f} ms "
        f"(target <= 100 ms)"
    )
    spreads = (
        med["group memory pause spread ms"],
        med["group disk-only pause spread ms"],
        med["sequential memory spread ms"],
        med["sequential disk-only spread ms"],
    )
    print(
        "members' instants: group pause spread {:.1f} ms (memory) / {:.1f} ms (disk-only), and no "
        "VM runs again until every member is taken: one instant by construction; sequential "
        "loop spread {:.0f} ms / {:.0f} ms".format(*spreads)
    )
    internal = med["single VM memory snapshot ms"]
    external = med["single VM disk-only snapshot ms"]
    print(
        f"single VM: internal with memory {internal:.1f} ms, external disk-only "
        f"{external:.1f} ms (ratio {internal / external:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
