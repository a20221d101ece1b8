"""The interference bench's figures and report: what one phase measured,
one protection state's rounds, and the ratios and verdicts printed and
recorded (bench/interference.py runs the rounds)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import _hostprobe as hp

RATE_TARGET = 0.95
JITTER_TARGET = 2.0
CAP_TOLERANCE = 0.10
PHASES = ("idle", "hogs", "crash")


@dataclass
class Probe:
    """What the cluster measured in one phase, and what the host saw meanwhile."""

    rate: float  # cpuloop iterations per second
    jitter: dict[str, int]  # p99_us, max_us, avg_us, samples, ...
    cluster: hp.Usage  # the cluster's QEMU: CPU use and run-queue waits
    busy: list[float]  # fraction of the time each host CPU was busy


@dataclass
class Run:
    probes: dict[str, list[Probe]] = field(default_factory=lambda: {p: [] for p in PHASES})
    caps: list[hp.Usage] = field(default_factory=list)
    hogs_early: list[str] = field(default_factory=list)
    kills: int = 0
    restarts: int = 0
    crash_error: str | None = None
    cluster_threads: str = ""


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def table(runs: dict[str, Run]) -> str:
    rows = [
        "| round | protection | phase | cpuloop it/s | jitter p99 / max (us) "
        "| cluster emulator / vCPU waiting for a CPU (ms/s) | host CPUs busy |",
        "|---|---|---|---|---|---|---|",
    ]
    rounds = len(next(iter(runs.values())).probes["idle"])
    for rnd in range(rounds):
        for (state, run), name in ((r, n) for r in runs.items() for n in PHASES):
            p = run.probes[name][rnd]
            w = p.cluster.wait_ms
            rows.append(
                f"| {rnd + 1} | {state} | {name} | {p.rate:.0f} | {p.jitter['p99_us']} / "
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


def compare_protection(runs: dict[str, Run]) -> list[str]:
    """The quiet-host result: hogs' jitter over idle with the protection on
    and off, and the targets (<= 2x idle with it on)."""
    if set(runs) != {"on", "off"}:
        return []
    lines = []
    for key in ("max_us", "p99_us"):
        on, off = ratios(runs["on"], "hogs", key), ratios(runs["off"], "hogs", key)
        lines.append(
            f"hogs {key[:-3]} jitter / idle, protection on vs off: "
            f"{statistics.median(on):.3f} vs {statistics.median(off):.3f} (medians; per round "
            f"on {', '.join(f'{v:.3f}' for v in on)}; off {', '.join(f'{v:.3f}' for v in off)}); "
            f"target with protection <= {JITTER_TARGET:g}: "
            f"{verdict(statistics.median(on) <= JITTER_TARGET)}"
        )
    waits = {
        s: statistics.median(p.cluster.wait_ms.get("emulator", 0) for p in r.probes["hogs"])
        for s, r in runs.items()
    }
    lines.append(
        f"cluster emulator threads waiting for a CPU under hogs: {waits['on']:.0f} ms/s with "
        f"protection, {waits['off']:.0f} ms/s without (medians)"
    )
    return lines
