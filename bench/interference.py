"""Freedom from interference: the safety VM's CPU rate and timer jitter while
its neighbours idle, hog, and crash, measured side by side in one run.

    .venv/bin/python bench/interference.py [--rounds 3] [--seconds 10] [--cap 50]
                                           [--protection both|on|off]
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

Emulator-thread protection (the cluster's cpu.protect_emulator, on by default
for a dedicated safety VM) is measured off and on in every round, switched by
`kvmctl apply` of the spec with it off or on (a live change of the domain's
CPU weight), so both are seen under the same host load.

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
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _hostprobe as hp  # noqa: E402
from _common import (  # noqa: E402
    EXAMPLE,
    RESULTS,
    destroy_and_sweep,
    record,
    result_block,
    running_domains,
    spec_variant,
    write_spec,
)
from _interference_report import (  # noqa: E402
    Probe,
    Run,
    compare_protection,
    summary,
    table,
)
from _neighbours import CrashLoop, Hogs  # noqa: E402

from kvmctl import cockpit  # noqa: E402
from kvmctl.host import threads  # noqa: E402
from kvmctl.planner.plan import domain_name  # noqa: E402
from tests.integration.ops_helpers import SupervisorProcess, tool  # noqa: E402

URI = os.environ.get("LIBVIRT_DEFAULT_URI", "qemu:///system")
INTRO = (
    "The safety VM's CPU-loop rate and timer jitter while its neighbours idle, hog and "
    "crash (`bench/interference.py`), in one run: example cockpit without hud and networks; "
    "cluster on its dedicated CPU 1 (FIFO vCPU), ivi (capped) and passenger on housekeeping "
    "CPU 0. Jitter = lateness of a 1 ms periodic SCHED_FIFO sleep in the cluster guest "
    "(cyclictest). ivi's cap is measured from the host over the hogs phase."
)


def bench_spec(set_name: str, cap: int, realtime: bool, protect: bool) -> dict[str, Any]:
    data = spec_variant(EXAMPLE, set_name, keep={"cluster", "ivi", "passenger"})
    vms = data["vms"]
    vms["cluster"]["cpu"]["protect_emulator"] = protect
    vms["ivi"]["cpu"]["limit"] = f"{cap}%"
    # A short window keeps the supervisor's backoff short, so ivi really loops.
    vms["ivi"]["restart"] = {"policy": "always", "max": 1000, "window": "10s"}
    if not realtime:
        vms["cluster"]["cpu"].pop("realtime", None)
    return data


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


def run_rounds(specs: dict[str, Path], set_name: str, seconds: int, rounds: int) -> dict[str, Run]:
    """`specs`: protection state ("off", "on") -> the spec with it so; the
    first is applied already."""
    dom = {vm: domain_name(set_name, vm) for vm in ("cluster", "ivi", "passenger")}
    runs = {state: Run() for state in specs}
    first = next(iter(specs.values()))

    def phase(run: Run, name: str, rnd: int) -> None:
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
    sup = SupervisorProcess(first, state, "--backoff", "1s")
    try:
        sup.wait(60, event="observed", vm="ivi")
        for rnd in range(rounds):
            for protection, spec in specs.items():
                cockpit.apply(spec, URI)  # a live change of the cluster's weight, or none
                run = runs[protection]
                run.cluster_threads = describe(dom["cluster"])
                print(f"protection {protection}: cluster {run.cluster_threads}", flush=True)
                _round(run, rnd, dom, sup, phase)
    finally:
        sup.terminate()
    return runs


def _round(
    run: Run,
    rnd: int,
    dom: dict[str, str],
    sup: SupervisorProcess,
    phase: Callable[[Run, str, int], None],
) -> None:
    """One round's idle, hogs and crash phases."""
    phase(run, "idle", rnd)

    hogs = Hogs([dom["ivi"], dom["passenger"]])
    try:
        hogs.start()
        time.sleep(2)  # let them get going
        ivi_pid = threads.qemu_pid(dom["ivi"])
        if ivi_pid is None:
            raise RuntimeError(f"{dom['ivi']} is not running")
        before = hp.sample(ivi_pid)
        phase(run, "hogs", rnd)
        run.caps.append(hp.usage(before, hp.sample(ivi_pid)))
        run.hogs_early += hogs.ended()
    finally:
        hogs.stop()

    crash = CrashLoop(sup, dom["ivi"], "ivi")
    try:
        crash.start()
        time.sleep(2)  # the first kill and restart under way
        phase(run, "crash", rnd)
    finally:
        crash.finish()
    run.kills += crash.kills
    run.restarts += crash.restarts
    run.crash_error = run.crash_error or crash.error


def describe(domain: str) -> str:
    pid = threads.qemu_pid(domain) or 0
    proc = threads.inspect(pid)
    v = proc.vcpus[0]
    emu = sorted(set().union(*(t.affinity for t in proc.emulator)))
    group = threads.cgroup_dir(v.tid, "cpu", pid)
    shares = (group.parent / "cpu.shares").read_text().strip() if group else "?"
    return (
        f"vCPU {v.policy} {v.priority} on CPU {','.join(map(str, sorted(v.affinity)))}, "
        f"emulator threads on CPU {','.join(map(str, emu))}, domain cpu.shares {shares}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="idle/hogs/crash rounds (3)")
    parser.add_argument("--cap", type=int, default=50, help="ivi's CPU limit, percent")
    parser.add_argument(
        "--protection",
        choices=("both", "on", "off"),
        default="both",
        help="the cluster's emulator-thread protection: off and on in every round (default), "
        "or one of them",
    )
    parser.add_argument("--no-realtime", action="store_true", help="cluster vCPU not FIFO")
    parser.add_argument("--no-record", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args()

    set_name = f"kvt-bench-intf-{secrets.token_hex(2)}"
    states = ("off", "on") if args.protection == "both" else (args.protection,)
    specs = {
        state: write_spec(bench_spec(set_name, args.cap, not args.no_realtime, state == "on"))
        for state in states
    }
    spec = specs[states[0]]
    load0, others0 = os.getloadavg()[0], running_domains(URI)
    print(f"set {set_name}, {args.seconds} s per measurement, ivi cap {args.cap} %", flush=True)
    try:
        t = time.monotonic()
        cockpit.apply(spec, URI)
        print(f"applied in {time.monotonic() - t:.1f} s", flush=True)
        virt_type = cockpit.open_session(spec, URI).facts.virt_type
        runs = run_rounds(specs, set_name, args.seconds, args.rounds)
    finally:
        destroy_and_sweep(spec, set_name, URI)
    load1 = os.getloadavg()[0]

    rows = table(runs)
    lines = [
        f"protection {state}: {line}"
        for state, run in runs.items()
        for line in summary(run, args.cap)
    ]
    lines += compare_protection(runs)
    print()
    print(rows)
    for line in lines:
        print(line)
    if not args.no_record:
        rt = "no real-time" if args.no_realtime else "FIFO vCPU"
        threads_said = "; ".join(f"protection {s}: {r.cluster_threads}" for s, r in runs.items())
        block = result_block(
            f"{args.rounds} rounds of {args.seconds} s measurements, emulator-thread protection "
            + " and ".join(states),
            virt_type,
            others0,
            f"load {load0:.1f} at start / {load1:.1f} at end",
            f"cluster ({rt}): {threads_said}. ivi cap {args.cap} %.",
            rows,
            lines,
        )
        record("interference", INTRO, block)
        print(f"\nrecorded in {RESULTS.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
