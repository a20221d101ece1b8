"""Time to a fully ready cockpit: kvmctl apply vs a sequential virsh loop vs a
bare parallel start of the same domain XML, measured side by side in one run.

    .venv/bin/python bench/apply.py [--spec examples/cockpit.yaml]

Readiness is the guest's `KVMCTL-READY <name>` line on its serial console,
seen by tailing the serial log every 5 ms. All three runs use the XML kvmctl
plans (networks left out, so no bridges are needed), one after another on the
same host; the ratios are the result, since absolute TCG times are not
representative.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _common import spec_variant, write_spec

from kvmctl import cockpit
from kvmctl.planner.domain import build_domain, build_volume
from kvmctl.planner.plan import VmPlan
from kvmctl.xml.storage import StoragePool

URI = "qemu:///system"


class MarkerTail(threading.Thread):
    """Wall-clock time at which a serial log first shows `marker`."""

    def __init__(self, path: str, marker: str, timeout: float = 180):
        super().__init__(daemon=True)
        self.path, self.marker, self.timeout = Path(path), marker.encode(), timeout
        self.seen: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline and not self._halt.is_set():
            try:
                if self.marker in self.path.read_bytes():
                    self.seen = time.time()
                    return
            except OSError:
                pass
            time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()


def tails(plans: dict[str, VmPlan]) -> dict[str, MarkerTail]:
    out = {n: MarkerTail(p.serial_log, f"KVMCTL-READY {n}") for n, p in plans.items()}
    for p in plans.values():
        Path(p.serial_log).unlink(missing_ok=True)
    for t in out.values():
        t.start()
    return out


@dataclass
class KvmctlRun:
    total: float  # apply, start to all ready (s)
    cluster: float  # apply start to the cluster ready (s)
    lag_ms: dict[str, float]  # kvmctl's readiness minus the marker in the log, per VM
    probes: dict[str, str]


def run_kvmctl(spec: Path) -> KvmctlRun:
    session = cockpit.open_session(spec, URI)
    marks = tails(session.plan.vms)
    t0 = time.time()
    try:
        result = cockpit.apply(spec, URI)
        total = time.time() - t0
        for t in marks.values():
            t.join()
    finally:
        cockpit.destroy(spec, URI)
    cluster = result.outcomes.get("cluster")
    return KvmctlRun(
        total=total,
        cluster=(cluster.ready_at or 0) - t0 if cluster else float("nan"),
        lag_ms={
            n: ((result.outcomes[n].ready_at or 0) - (t.seen or 0)) * 1000 for n, t in marks.items()
        },
        probes={n: p.vm.ready.probe for n, p in session.plan.vms.items()},
    )


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", URI, *args], check=True, capture_output=True)


def run_bare(spec: Path, parallel: bool) -> float:
    """define + start + wait for the marker, with plain virsh, over kvmctl's XML."""
    session = cockpit.open_session(spec, URI)
    assert session.virt is not None
    plans = session.plan.vms
    work = Path(tempfile.mkdtemp())
    virt = session.virt
    pool = StoragePool(name=session.options.pool, target_path=session.options.pool_path)
    virt.ensure_pool(pool.to_xml(), session.options.pool)
    for name, p in plans.items():
        virt.create_volume(p.volume.pool, build_volume(p).to_xml())
        (work / f"{name}.xml").write_text(build_domain(p, rt_by_thread=True).to_xml())
    marks = tails(plans)
    t0 = time.time()
    try:
        if parallel:
            starters = [
                threading.Thread(
                    target=lambda n=n: (
                        virsh("define", str(work / f"{n}.xml")),
                        virsh("start", plans[n].domain),
                    )
                )
                for n in plans
            ]
            for s in starters:
                s.start()
            for s in starters:
                s.join()
            for t in marks.values():
                t.join()
        else:
            for level in session.plan.levels:
                for name in level:
                    virsh("define", str(work / f"{name}.xml"))
                    virsh("start", plans[name].domain)
                    marks[name].join()
        done = max(t.seen or float("inf") for t in marks.values())
        return done - t0
    finally:
        for p in plans.values():
            virt.stop(p.domain)
            virt.undefine(p.domain)
            virt.delete_volume(p.volume.pool, p.volume.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=Path("examples/cockpit.yaml"))
    args = parser.parse_args()
    tag = secrets.token_hex(2)
    full = write_spec(spec_variant(args.spec, f"bench-{tag}"))
    alone = write_spec(spec_variant(args.spec, f"bench-{tag}", keep={"cluster"}))

    cluster_alone = run_kvmctl(alone).cluster
    seq = run_bare(full, parallel=False)
    par = run_bare(full, parallel=True)
    k = run_kvmctl(full)
    lags = [abs(v) for v in k.lag_ms.values()]

    print(f"kvmctl apply, all ready        {k.total:6.2f} s")
    print(f"sequential virsh loop          {seq:6.2f} s")
    print(f"bare parallel start            {par:6.2f} s")
    print(f"cluster ready alone            {cluster_alone:6.2f} s")
    print(f"cluster ready within apply     {k.cluster:6.2f} s")
    for vm, ms in sorted(k.lag_ms.items()):
        print(f"readiness - marker in log      {vm:10s} {ms:+6.0f} ms ({k.probes[vm]})")
    print()
    print(f"ratio kvmctl / bare parallel   {k.total / par:5.2f}   (target <= 1.10)")
    print(f"ratio kvmctl / sequential      {k.total / seq:5.2f}")
    print(f"ratio bare parallel / sequential {par / seq:5.2f}")
    print(f"ratio cluster in apply / alone {k.cluster / cluster_alone:5.2f}   (target <= 1.50)")
    print(
        f"|readiness - marker|           median {statistics.median(lags):.0f} ms, "
        f"max {max(lags):.0f} ms   (target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
