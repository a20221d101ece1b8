#!/usr/bin/env python3
"""Cold boot vs warm start to ready of a cluster-like VM, one run.

    .venv/bin/python bench/warmstart.py [--as-is] [--no-record]

The VM is the example cockpit's instrument cluster (examples/cockpit.yaml:
test-guest-rt, its memory, disk, display and watchdog, the agent probe),
with shared placement and without real-time or hugepages unless `--as-is`,
so the run does not need CPU 1 and hugepages to itself. Its domain exists
and is stopped before each measured start, which is what a warm start
replaces (an apply of a stopped VM, a supervisor restart):

  cold   boot.mode cold: kvmctl apply boots it (start paused, post-start, resume, agent)
  save   boot.mode warm, no saved state yet: a cold boot, then the state is saved
  warm   boot.mode warm: kvmctl apply restores the saved state, sets the clock,
         re-checks the agent

Each row gives the VM's own start to ready (kvmctl's `ready_seconds`: from
the resume of a cold boot, from the start of the restore of a warm one) and
apply's start to ready (`since_apply_s`, what a boot deadline measures). The
ratio cold/warm is the result; absolute TCG times are not representative.
Figures are appended to bench/RESULTS.md, section "warm start".
"""

from __future__ import annotations

import argparse
import os
import secrets
import time
from pathlib import Path
from typing import Any

import libvirt
import yaml
from _common import (
    EXAMPLE,
    domain_type,
    record,
    result_block,
    running_domains,
    spec_variant,
    write_spec,
)

from kvmctl import cockpit
from kvmctl.cockpit.outcome import VmOutcome

URI = "qemu:///system"
INTRO = (
    "Cold boot vs warm start (`boot: {mode: warm}`) to ready of a cluster-like VM whose "
    "domain is stopped (`bench/warmstart.py`): kvmctl apply's own figures."
)


def cluster_spec(set_name: str, as_is: bool, mode: str) -> dict[str, Any]:
    data = spec_variant(EXAMPLE, set_name, keep={"cluster"})
    vm = data["vms"]["cluster"]
    if not as_is:
        vm["cpu"] = {"placement": "shared"}
        vm["memory"] = {"size": vm["memory"]["size"]}
        vm.pop("criticality", None)
        data.pop("host", None)
    vm["ready"] = {"probe": "agent", "timeout": "300s"}
    vm["boot"] = {"mode": mode}
    return data


def power_off(domain: str) -> None:
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(domain)
        if dom.isActive():
            dom.destroy()
    finally:
        conn.close()


def start(path: Path, domain: str) -> VmOutcome:
    """Power the VM off, apply: one measured start."""
    power_off(domain)
    result = cockpit.apply(path, URI)
    outcome = result.outcomes["cluster"]
    assert outcome.action == "start" and outcome.ready_seconds is not None, outcome
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--as-is", action="store_true", help="the example's cluster unchanged")
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    set_name = f"kvt-bw{secrets.token_hex(2)}"
    domain = f"{set_name}-cluster"
    cold_path = write_spec(cluster_spec(set_name, args.as_is, "cold"))
    warm_path = cold_path.with_name("warm.yaml")
    warm_path.write_text(yaml.safe_dump(cluster_spec(set_name, args.as_is, "warm")))
    others = running_domains(URI)
    load0 = os.getloadavg()[0]
    rows: dict[str, VmOutcome] = {}
    try:
        created = cockpit.apply(cold_path, URI).outcomes["cluster"]
        print(f"created (first boot) in {created.ready_seconds:.2f} s")
        virt_type = domain_type(domain)
        rows["cold"] = start(cold_path, domain)
        rows["save"] = start(warm_path, domain)
        rows["warm"] = start(warm_path, domain)
    finally:
        cockpit.destroy(cold_path, URI)
    assert rows["cold"].boot == "cold" and rows["save"].boot == "cold", rows
    assert rows["warm"].boot == "warm", f"the warm start fell back: {rows['warm'].notes}"
    lines = [
        "| start | boot | VM start to ready (s) | apply start to ready (s) |",
        "|---|---|---|---|",
    ]
    for name, o in rows.items():
        lines.append(f"| {name} | {o.boot} | {o.ready_seconds:.2f} | {o.since_apply_s or 0:.2f} |")
    cold, warm = rows["cold"], rows["warm"]
    assert cold.ready_seconds and warm.ready_seconds and cold.since_apply_s and warm.since_apply_s
    ratio = cold.ready_seconds / warm.ready_seconds
    ratio_apply = cold.since_apply_s / warm.since_apply_s
    table = "\n".join(lines)
    print(table)
    print(f"cold/warm: {ratio:.1f}x (VM start to ready), {ratio_apply:.1f}x (apply to ready)")
    notes = [
        f"cold/warm: **{ratio:.1f}x** from the VM's start, {ratio_apply:.1f}x from apply's start",
        f"saving the state after the 'save' boot: {'; '.join(rows['save'].notes)}",
        f"the warm start: {'; '.join(warm.notes)}",
        "the cluster "
        + (
            "as in examples/cockpit.yaml"
            if args.as_is
            else "with shared placement, no real-time, no hugepages"
        ),
    ]
    if not args.no_record:
        load = f"load {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end"
        body = (
            "One run: the VM's domain is powered off before each start; `cold` boots it, "
            "`save` boots it cold with boot.mode warm and saves its state, `warm` restores it."
        )
        record(
            "warm start",
            INTRO,
            result_block("one run", virt_type, others, load, body, table, notes),
        )
        print(f"recorded in bench/RESULTS.md ({time.strftime('%H:%M')})")


if __name__ == "__main__":
    main()
