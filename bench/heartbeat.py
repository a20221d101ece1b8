#!/usr/bin/env python3
"""Heartbeat-miss detection latency of `kvmctl supervise`, one run of rounds.

    .venv/bin/python bench/heartbeat.py [--rounds 5] [--period-ms 200] [--deadline-ms 1000]
                                        [--no-record]

Two test guests (128 MiB, shared CPUs): `cluster`, the safety VM, beats over
its heartbeat channel (`kvmctl-tool heartbeat start PERIOD_MS`); `ivi` is
shed by `safe_state: {heartbeat_missed: [pause]}`. Each round the beats
flow for a few deadlines, then stop in the guest; the supervisor's own
events give, on one clock, when it heard the last beat, when it reported
the miss, when the safe state entered and when ivi's pause was done; then
the beats resume and the time to ivi's resume is taken the same way.

The baseline is the deadline itself: a detector with no overhead reports a
miss exactly `deadline` after the last beat. The result is detection over
deadline (>= 1), and last beat to shed VM paused against the bound the
issue sets, deadline + one period.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    destroy_and_sweep,
    domain_type,
    record,
    result_block,
    running_domains,
)
from kvmctl import cockpit  # noqa: E402
from tests.integration.ops_helpers import (  # noqa: E402
    SupervisorProcess,
    domain_state,
    tool,
    wait_until,
)

URI = "qemu:///system"
SET = f"kvt-bh{secrets.token_hex(2)}"
INTRO = (
    "Heartbeat-miss detection of `kvmctl supervise` (`bench/heartbeat.py`): from the last "
    "beat the host heard to the miss, the safe state and the shed VM paused, against the "
    "deadline (a detector without overhead reports the miss exactly at the deadline)."
)
VM = "memory: {size: 128MiB}, disk: {size: 32MiB}, ready: {probe: agent, timeout: 180s}"
SPEC = """\
name: {name}
vms:
  cluster: {{criticality: safety, {vm}, heartbeat: {{period: {period}ms, deadline: {deadline}ms}}}}
  ivi: {{{vm}}}
safe_state:
  shed: [ivi]
  heartbeat_missed: [pause]
"""


def beats(sup: SupervisorProcess) -> int:
    data: dict[str, Any] = json.loads((sup.state_dir / f"{SET}.json").read_text())
    return int((data["vms"]["cluster"].get("heartbeat") or {}).get("beats") or 0)


def one_round(sup: SupervisorProcess, period_ms: int, deadline_s: float) -> dict[str, float]:
    cluster = f"{SET}-cluster"
    time.sleep(3 * deadline_s)  # beats flow for a few deadlines
    mark = sup.mark()
    tool(cluster, "heartbeat", "stop")
    missed = sup.wait(60, since=mark, event="heartbeat-missed", vm="cluster")
    entered = sup.wait(30, since=mark, event="safe-state", on="heartbeat-missed")
    paused = sup.wait(30, since=mark, event="safe-state-step", action="pause", done=True)
    last_beat = missed["last_beat"]  # the listener's clock, before the hop to the main thread
    assert domain_state(f"{SET}-ivi") == "paused"
    mark = sup.mark()
    tool(cluster, "heartbeat", "start", str(period_ms))
    resumed = sup.wait(60, since=mark, event="heartbeat-resumed", vm="cluster")
    resume = sup.wait(30, since=mark, event="safe-state-step", action="resume", done=True)
    wait_until(lambda: domain_state(f"{SET}-ivi") == "running", 30, "ivi to run again")
    return {
        "detect": missed["age_s"],
        "entered": entered["ts"] - last_beat,
        "paused": paused["ts"] - last_beat,
        "resumed": resume["ts"] - resumed["last_beat"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--period-ms", type=int, default=200)
    parser.add_argument("--deadline-ms", type=int, default=1000)
    parser.add_argument("--no-record", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    deadline_s = args.deadline_ms / 1000
    bound = deadline_s + args.period_ms / 1000
    work = Path(tempfile.mkdtemp(prefix="kvmctl-bench-"))
    spec = work / "spec.yaml"
    spec.write_text(SPEC.format(name=SET, vm=VM, period=args.period_ms, deadline=args.deadline_ms))
    others = running_domains(URI)
    load0 = os.getloadavg()[0]
    rounds: list[dict[str, float]] = []
    os.environ["KVMCTL_SUPERVISE_DIR"] = str(work)
    try:
        cockpit.apply(spec, URI)
        virt_type = domain_type(f"{SET}-cluster")
        sup = SupervisorProcess(spec, work)
        try:
            sup.wait(60, event="observed", vm="ivi")
            tool(f"{SET}-cluster", "heartbeat", "start", str(args.period_ms))
            wait_until(lambda: beats(sup) > 3, 60, "the first beats to reach the host")
            for i in range(args.rounds):
                r = one_round(sup, args.period_ms, deadline_s)
                rounds.append(r)
                print(
                    f"round {i + 1}: miss {r['detect']:.3f} s after the last beat, safe state "
                    f"{r['entered']:.3f} s, ivi paused {r['paused']:.3f} s; resumed in "
                    f"{r['resumed']:.3f} s"
                )
        finally:
            sup.terminate()
    finally:
        try:
            destroy_and_sweep(spec, SET, URI)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    lines = [
        "| round | miss after last beat (s) | / deadline | safe state (s) | ivi paused (s) "
        "| within deadline + period | beat again to ivi resumed (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rounds, 1):
        lines.append(
            f"| {i} | {r['detect']:.3f} | {r['detect'] / deadline_s:.3f} | {r['entered']:.3f} "
            f"| {r['paused']:.3f} | {'yes' if r['paused'] <= bound else 'NO'} "
            f"| {r['resumed']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    worst = max(r["paused"] for r in rounds)
    notes = [
        f"median miss {med['detect']:.3f} s after the last beat: "
        f"**{med['detect'] / deadline_s:.3f}x the deadline** "
        f"({args.deadline_ms} ms, period {args.period_ms} ms)",
        f"median last beat to ivi paused {med['paused']:.3f} s, worst {worst:.3f} s; bound "
        f"(deadline + period) {bound:.3f} s: met in "
        f"{sum(r['paused'] <= bound for r in rounds)} of {len(rounds)} rounds",
        f"median beat heard again to ivi resumed {med['resumed']:.3f} s",
    ]
    for note in notes:
        print(note)
    if not args.no_record:
        load = f"load {load0:.1f} at start / {os.getloadavg()[0]:.1f} at end"
        body = f"{len(rounds)} rounds in one run; times from the supervisor's own events."
        block = result_block("one run", virt_type, others, load, body, table, notes)
        record("heartbeat", INTRO, block)
        print(f"recorded in bench/RESULTS.md ({time.strftime('%H:%M')})")


if __name__ == "__main__":
    main()
