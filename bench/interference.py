"""Freedom from interference: the safety VM's CPU rate and timer jitter while
its neighbours idle, hog, and crash, measured side by side in one run.

    .venv/bin/python bench/interference.py [--rounds 3] [--seconds 10] [--cap 50]
                                           [--no-realtime] [--no-record]

The example cockpit without hud and networks: `cluster` is the safety VM
(dedicated CPU, real-time vCPU as in the example unless --no-realtime), `ivi`
and `passenger` share the housekeeping CPU, ivi capped at --cap percent.
`kvmctl supervise` runs throughout. Each round has three phases; in each the
cluster runs `kvmctl-tool cpuloop` (iterations per second) and then
`kvmctl-tool jitter` (cyclictest: lateness of a 1 ms periodic SCHED_FIFO
sleep, p99 and max), each for --seconds:

  idle   ivi and passenger booted and idle
  hogs   ivi and passenger each run a CPU loop, a memory dirtier (64 MiB/s)
         and a disk writer (32 MiB + fsync, again and again)
  crash  ivi's QEMU is SIGKILLed as soon as the supervisor reports it
         restarted (booted and ready), again and again

Ratios are taken within a round (phase / the same round's idle), since the
host's own load drifts between rounds; medians over rounds are printed with
every round's value. ivi's cap is measured from the host over the hogs phase:
CPU time of its vCPU threads (what the cgroup quota covers) and of its whole
QEMU process, as a fraction of one CPU, with how often the quota throttled it.
Targets: cluster rate >= 95 % of idle, max jitter <= 2x idle, ivi's vCPU time
within 10 % of the cap. Under TCG absolute figures mean little. Figures go to
bench/RESULTS.md, section "interference".
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _hostprobe as hp  # noqa: E402
from _common import (  # noqa: E402
    EXAMPLE,
    RESULTS,
    record,
    result_block,
    spec_variant,
    write_spec,
)
from _neighbours import CrashLoop, Hogs  # noqa: E402

from kvmctl import cockpit  # noqa: E402
from kvmctl.host import threads  # noqa: E402
from kvmctl.planner.plan import domain_name  # noqa: E402
from tests.integration.ops_helpers import SupervisorProcess, sweep_set, tool  # noqa: E402

URI = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
RATE_TARGET = 0.95
JITTER_TARGET = 2.0
CAP_TOLERANCE = 0.10
PHASES = ("idle", "hogs", "crash")
INTRO = (
    "The safety VM's CPU-loop rate and timer jitter while its neighbours idle, hog and "
    "crash (`bench/interference.py`), in one run: example cockpit without hud and networks; "
    "cluster on its dedicated CPU 1 (FIFO vCPU), ivi (capped) and passenger on housekeeping "
    "CPU 0. Jitter = lateness of a 1 ms periodic SCHED_FIFO sleep in the cluster guest "
    "(cyclictest). ivi's cap is measured from the host over the hogs phase."
)


def bench_spec(set_name: str, cap: int, realtime: bool) -> dict[str, Any]:
    data = spec_variant(EXAMPLE, set_name, keep={"cluster", "ivi", "passenger"})
    vms = data["vms"]
    vms["ivi"]["cpu"]["limit"] = f"{cap}%"
    # A short window keeps the supervisor's backoff short, so ivi really loops.
    vms["ivi"]["restart"] = {"policy": "always", "max": 1000, "window": "10s"}
    if not realtime:
        vms["cluster"]["cpu"].pop("realtime", None)
    return data


@dataclass
class Probe:
    """What the cluster measured in one phase, and what the host saw meanwhile."""

    rate: float  # cpuloop iterations per second
    jitter: dict[str, int]  # p99_us, max_us, avg_us, samples, ...
    cluster: hp.Usage  # the cluster's QEMU: CPU use and run-queue waits
    busy: list[float]  # fraction of the time each host CPU was busy


def measure(domain: str, seconds: int) -> Probe:
    pid = threads.qemu_pid(domain)
    if pid is None:
        raise RuntimeError(f"{domain} is not running")
    before, cpus0 = hp.sample(pid), hp.cpu_times()
    budget = seconds + 90  # slow guest-exec round trips under TCG and load
    loop = tool(domain, "cpuloop", str(seconds), timeout=budget)
    jitter = tool(domain, "jitter", str(seconds), timeout=budget)
    after, cpus1 = hp.sample(pid), hp.cpu_times()
    if "iterations_per_second" not in loop or "max_us" not in jitter:
        raise RuntimeError(
            f"kvmctl-tool in {domain} gave no figures ({loop}, {jitter}): is the guest image "
            "built from this tree (`make images`, or KVMCTL_IMAGE_DIR)?"
        )
    return Probe(
        rate=float(loop["iterations_per_second"]),
        jitter={k: int(v) for k, v in jitter.items()},
        cluster=hp.usage(before, after),
        busy=hp.busy(cpus0, cpus1),
    )


@dataclass
class Run:
    probes: dict[str, list[Probe]] = field(default_factory=lambda: {p: [] for p in PHASES})
    caps: list[hp.Usage] = field(default_factory=list)
    hogs_early: list[str] = field(default_factory=list)
    kills: int = 0
    restarts: int = 0
    crash_error: str | None = None
    cluster_threads: str = ""


def run_rounds(spec: Path, set_name: str, seconds: int, rounds: int) -> Run:
    dom = {vm: domain_name(set_name, vm) for vm in ("cluster", "ivi", "passenger")}
    run = Run(cluster_threads=describe(dom["cluster"]))
    print(f"cluster threads: {run.cluster_threads}", flush=True)

    def phase(name: str, rnd: int) -> None:
        t = time.monotonic()
        p = measure(dom["cluster"], seconds)
        run.probes[name].append(p)
        print(
            f"round {rnd + 1} {name:5s} rate {p.rate:8.0f}/s  jitter p99 {p.jitter['p99_us']:6d} "
            f"us  max {p.jitter['max_us']:6d} us  CPUs busy "
            f"{' '.join(f'{b:.0%}' for b in p.busy)}  ({time.monotonic() - t:.0f} s)",
            flush=True,
        )

    # The supervisor runs throughout, as it would beside a real cockpit.
    state = Path(tempfile.mkdtemp(prefix="kvmctl-bench-sup-"))
    sup = SupervisorProcess(spec, state, "--backoff", "1s")
    try:
        sup.wait(60, event="observed", vm="ivi")
        for rnd in range(rounds):
            phase("idle", rnd)

            hogs = Hogs([dom["ivi"], dom["passenger"]])
            try:
                hogs.start()
                time.sleep(2)  # let them get going
                ivi_pid = threads.qemu_pid(dom["ivi"])
                if ivi_pid is None:
                    raise RuntimeError(f"{dom['ivi']} is not running")
                before = hp.sample(ivi_pid)
                phase("hogs", rnd)
                run.caps.append(hp.usage(before, hp.sample(ivi_pid)))
                run.hogs_early += hogs.ended()
            finally:
                hogs.stop()

            crash = CrashLoop(sup, dom["ivi"], "ivi")
            try:
                crash.start()
                time.sleep(2)  # the first kill and restart under way
                phase("crash", rnd)
            finally:
                crash.finish()
            run.kills += crash.kills
            run.restarts += crash.restarts
            run.crash_error = run.crash_error or crash.error
    finally:
        sup.terminate()
    return run


def describe(domain: str) -> str:
    proc = threads.inspect(threads.qemu_pid(domain) or 0)
    v = proc.vcpus[0]
    emu = sorted(set().union(*(t.affinity for t in proc.emulator)))
    return (
        f"vCPU {v.policy} {v.priority} on CPU {','.join(map(str, sorted(v.affinity)))}, "
        f"emulator threads on CPU {','.join(map(str, emu))}"
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(run: Run) -> str:
    rows = [
        "| round | phase | cpuloop it/s | jitter p99 / max (us) "
        "| cluster emulator / vCPU waiting for a CPU (ms/s) | host CPUs busy |",
        "|---|---|---|---|---|---|",
    ]
    for rnd in range(len(run.probes["idle"])):
        for name in PHASES:
            p = run.probes[name][rnd]
            w = p.cluster.wait_ms
            rows.append(
                f"| {rnd + 1} | {name} | {p.rate:.0f} | {p.jitter['p99_us']} / "
                f"{p.jitter['max_us']} | {w.get('emulator', 0):.0f} / {w.get('vcpu', 0):.0f} "
                f"| {' / '.join(f'{b:.0%}' for b in p.busy)} |"
            )
    return "\n".join(rows)


def ratios(run: Run, name: str, key: str) -> list[float]:
    """Per round: the phase's figure over the same round's idle figure."""

    def value(p: Probe) -> float:
        return p.rate if key == "rate" else max(p.jitter[key], 1)

    return [value(a) / value(b) for a, b in zip(run.probes[name], run.probes["idle"], strict=True)]


def summary(run: Run, cap: int) -> list[str]:
    def spread(values: list[float]) -> str:
        each = ", ".join(f"{v:.3f}" for v in values)
        return f"{statistics.median(values):.3f} (per round {each})"

    lines = ["Ratios are taken within each round (phase / that round's idle); medians over rounds."]
    for name in ("hogs", "crash"):
        rate, jit = ratios(run, name, "rate"), ratios(run, name, "max_us")
        lines.append(
            f"{name}: cluster rate / idle = {spread(rate)}, target >= {RATE_TARGET}: "
            f"{verdict(statistics.median(rate) >= RATE_TARGET)}; max jitter / idle = "
            f"{spread(jit)}, target <= {JITTER_TARGET:g}: "
            f"{verdict(statistics.median(jit) <= JITTER_TARGET)}; p99 jitter / idle = "
            f"{spread(ratios(run, name, 'p99_us'))}"
        )
    if run.caps:
        vcpu = statistics.median(c.vcpu for c in run.caps) * 100
        process = statistics.median(c.process for c in run.caps) * 100
        low, high = cap * (1 - CAP_TOLERANCE), cap * (1 + CAP_TOLERANCE)
        rounds = "; ".join(
            f"{c.vcpu:.1%}, throttled in {c.throttled}/{c.periods} periods, CPU 0 "
            f"{p.busy[0]:.0%} busy"
            for c, p in zip(run.caps, run.probes["hogs"], strict=True)
        )
        lines.append(
            f"ivi cap {cap} %: its vCPU threads used {vcpu:.1f} % of one CPU (median; target "
            f"{low:.0f}-{high:.0f} %: {verdict(low <= vcpu <= high)}), whole QEMU process "
            f"{process:.1f} % (emulator and I/O threads are outside the quota); per round: "
            f"{rounds}"
        )
        # A cap can only be seen where it is what limits the VM: with the shared
        # CPU saturated by others, ivi gets less than its cap and is not throttled.
        bound = [c.vcpu * 100 for c in run.caps if c.periods and c.throttled >= c.periods / 2]
        if bound:
            lines.append(
                f"ivi cap in the {len(bound)} round(s) where the quota throttled ivi in at "
                f"least half the periods: {statistics.median(bound):.1f} % (target "
                f"{low:.0f}-{high:.0f} %: {verdict(low <= statistics.median(bound) <= high)})"
            )
    lines.append(
        f"crash loop: {run.kills} kills of ivi's QEMU, {run.restarts} supervised restarts"
        + (f"; stopped early: {run.crash_error}" if run.crash_error else "")
    )
    if run.hogs_early:
        lines.append(f"hogs that ended before the measurement did: {'; '.join(run.hogs_early)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="idle/hogs/crash rounds (3)")
    parser.add_argument("--cap", type=int, default=50, help="ivi's CPU limit, percent")
    parser.add_argument("--no-realtime", action="store_true", help="cluster vCPU not FIFO")
    parser.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    set_name = f"kvt-bench-intf-{secrets.token_hex(2)}"
    spec = write_spec(bench_spec(set_name, args.cap, not args.no_realtime))
    load0, others0 = os.getloadavg()[0], len(list(Path("/run/libvirt/qemu").glob("*.pid")))
    print(f"set {set_name}, {args.seconds} s per measurement, ivi cap {args.cap} %", flush=True)
    try:
        t = time.monotonic()
        cockpit.apply(spec, URI)
        print(f"applied in {time.monotonic() - t:.1f} s", flush=True)
        virt_type = cockpit.open_session(spec, URI).facts.virt_type
        run = run_rounds(spec, set_name, args.seconds, args.rounds)
    finally:
        try:
            cockpit.destroy(spec, URI)
        finally:
            left = sweep_set(set_name)
            if left:
                print(f"removed leftovers: {left}", file=sys.stderr)
    load1 = os.getloadavg()[0]

    rows, lines = table(run), summary(run, args.cap)
    print()
    print(rows)
    for line in lines:
        print(line)
    if not args.no_record:
        rt = "no real-time" if args.no_realtime else "FIFO vCPU"
        block = result_block(
            f"{args.rounds} rounds of {args.seconds} s measurements",
            virt_type,
            others0,
            f"load {load0:.1f} at start / {load1:.1f} at end",
            f"cluster ({rt}): {run.cluster_threads}. ivi cap {args.cap} %.",
            rows,
            lines,
        )
        record("interference", INTRO, block)
        print(f"\nrecorded in {RESULTS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
