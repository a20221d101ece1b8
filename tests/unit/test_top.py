"""`kvmctl top` arithmetic: samples -> rates, on made-up statistics."""

from __future__ import annotations

import pytest

from kvmctl.host.threads import QemuProcess, QemuThread
from kvmctl.observe.top import DomainSample, VcpuSample, rows, sample

pytestmark = pytest.mark.unit

S = 1_000_000_000  # ns per second


def dom(at: float, cpu_s: float, vcpu_s: list[float], pid: int = 10, **kw) -> DomainSample:  # type: ignore[no-untyped-def]
    return DomainSample(
        domain=kw.pop("domain", "s-a"),
        set_name="s",
        vm=kw.pop("vm", "a"),
        at=at,
        state=kw.pop("state", "running"),
        cpu_ns=int(cpu_s * S),
        vcpus=tuple(
            VcpuSample(i, int(t * S), int(t * S / 2), last_cpu=1, affinity=frozenset({1, 2}))
            for i, t in enumerate(vcpu_s)
        ),
        pid=pid,
        rss_kib=300 * 1024,
        hugetlb_kib=256 * 1024,
        memory_kib=256 * 1024,
        **kw,
    )


def test_rates_per_vm_and_vcpu() -> None:
    (row,) = rows(
        {"s-a": dom(10.0, 5.0, [2.0, 1.0])}, {"s-a": dom(12.0, 6.5, [3.0, 1.5])}, {"s-a": 3}
    )
    assert row.cpu_pct == 75.0  # 1.5 s of CPU in 2 s
    assert [(v.index, v.cpu_pct, v.wait_pct, v.pcpu, v.affinity) for v in row.vcpus] == [
        (0, 50.0, 25.0, 1, "1-2"),
        (1, 25.0, 12.5, 1, "1-2"),
    ]
    assert (row.memory_mib, row.rss_mib, row.hugepages_mib, row.restarts) == (256, 300, 256, 3)


def test_no_rates_across_a_restart_or_for_a_new_vm() -> None:
    before = {"s-a": dom(10.0, 5.0, [2.0])}
    (row,) = rows(before, {"s-a": dom(12.0, 0.5, [0.2], pid=11)})
    assert row.cpu_pct is None and row.vcpus[0].cpu_pct is None
    (row,) = rows({}, {"s-a": dom(12.0, 0.5, [0.2])})
    assert row.cpu_pct is None and row.restarts is None


def test_rows_sorted_by_set_and_vm() -> None:
    after = {
        "s-b": dom(1.0, 0, [], domain="s-b", vm="b"),
        "s-a": dom(1.0, 0, [], domain="s-a", vm="a"),
    }
    assert [r.vm for r in rows({}, after)] == ["a", "b"]


def test_sample_from_libvirt_stats_and_proc() -> None:
    stats = {
        "s-a": {
            "state.state": 1,
            "cpu.time": 7 * S,
            "vcpu.current": 2,
            "vcpu.0.time": 3 * S,
            "vcpu.0.delay": S,
            "vcpu.1.time": 2 * S,
            "balloon.current": 262144,
            "balloon.rss": 999,
        }
    }
    vcpu = QemuThread(101, "CPU 0/TCG", "vcpu", 0, frozenset({1}), "fifo", 10, 1, 3.0)
    proc = QemuProcess(pid=42, started=0.0, hugetlb_kib=262144, rss_kib=70000, threads=(vcpu,))
    out = sample(stats, {"s-a": ("s", "a"), "s-b": ("s", "b")}, 5.0, lambda d: proc)
    a = out["s-a"]
    assert (a.state, a.cpu_ns, a.pid, a.rss_kib, a.hugetlb_kib, a.memory_kib) == (
        "running",
        7 * S,
        42,
        70000,
        262144,
        262144,
    )
    assert a.vcpus[0] == VcpuSample(0, 3 * S, S, 1, frozenset({1}))
    assert a.vcpus[1].last_cpu is None and a.vcpus[1].delay_ns is None
    assert out["s-b"].state == "shut off" and out["s-b"].vcpus == ()
    # without a local QEMU (a remote host), libvirt's own figures are used
    remote = sample(stats, {"s-a": ("s", "a")}, 5.0, lambda d: None)["s-a"]
    assert remote.pid is None and remote.rss_kib == 999 and remote.vcpus[0].last_cpu is None
