"""kvmctl.host.doctor.run_checks: the judgement of host facts, on made-up hosts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kvmctl.host.doctor import NO_LOCKING, TCG_WARNING, DoctorReport, run_checks
from kvmctl.host.facts import CpuInfo, HostFacts, HugepagePool, LibvirtInfo
from kvmctl.host.kvmprobe import KvmVerdict

pytestmark = pytest.mark.unit

LIBVIRT_OK = LibvirtInfo(
    uri="qemu:///system",
    reachable=True,
    library_version="9.0.0",
    daemon_version="9.0.0",
    hypervisor_version="7.2.22",
)
TCG_VERDICT = KvmVerdict(
    "present-but-unusable",
    "/dev/kvm exists but a probe guest failed under KVM",
    "qemu",
    probed=True,
    tcg_ok=True,
)


def host(**changes: Any) -> HostFacts:
    """A host like the CI machines: KVM listed but unusable, 8 MiB memlock, cgroup v1 + RT."""
    base: dict[str, Any] = dict(
        hostname="ci",
        libvirt=LIBVIRT_OK,
        daemons={"libvirtd": True, "virtlogd": True},
        kvm="present-but-unusable",
        kvm_reason=TCG_VERDICT.reason,
        virt_type="qemu",
        cpus=[CpuInfo(id=0), CpuInfo(id=1, core=1)],
        memory_total_kib=24 * 1024 * 1024,
        hugepages=[
            HugepagePool(size_kib=2048, node=0, total=512, free=500),
            HugepagePool(size_kib=1048576, node=0, total=0, free=0),
        ],
        hugetlbfs_mounts=["/dev/hugepages"],
        memlock_limit_kib=8192,
        cap_sys_resource=False,
        cgroup_version=1,
        cgroup_controllers=["cpu", "cpuacct", "cpuset", "memory"],
        rt_group_sched=True,
        rt_runtime_us_root=950000,
    )
    base.update(changes)
    return HostFacts(**base)


def by_name(facts: HostFacts, verdict: KvmVerdict | None = TCG_VERDICT) -> dict[str, Any]:
    return {c.name: c for c in run_checks(facts, verdict, "libvirtd, pid 1")}


def test_ci_host_can_run_a_cockpit_under_tcg() -> None:
    facts = host()
    checks = by_name(facts)
    report = DoctorReport(facts, list(checks.values()), TCG_VERDICT)
    assert report.ok and report.failures == []
    assert checks["kvm"].status == "warn"
    assert "virt type 'qemu'" in checks["kvm"].detail and TCG_WARNING in checks["kvm"].detail
    assert checks["memlock"].status == "warn"
    assert NO_LOCKING in checks["memlock"].detail and "8 MiB" in checks["memlock"].detail
    assert checks["hugepages"].detail.startswith("2 MiB: 500 free of 512 on node 0")
    assert "none reserved of 1 GiB" in checks["hugepages"].detail
    assert checks["cgroups"].detail.startswith("v1: cpu, cpuacct")
    assert "950000" in checks["realtime"].detail
    assert checks["vlan"].status == "warn"
    assert checks["cpus"].detail.startswith("2 online (0-1)")
    assert checks["libvirt"].detail == (
        "qemu:///system: library 9.0.0, daemon 9.0.0, hypervisor 7.2.22"
    )


def test_usable_kvm_is_ok_and_says_kvm() -> None:
    verdict = KvmVerdict("usable", "a probe guest reached user space in 0.30 s", "kvm", True)
    checks = by_name(host(kvm="usable", kvm_reason=verdict.reason, virt_type="kvm"), verdict)
    assert checks["kvm"].status == "ok"
    assert "virt type 'kvm'" in checks["kvm"].detail


def test_cached_verdict_is_said() -> None:
    cached = KvmVerdict(**{**TCG_VERDICT.__dict__, "cached": True})
    assert "--reprobe" in by_name(host(), cached)["kvm"].detail


def test_absent_kvm_still_runs_under_tcg() -> None:
    verdict = KvmVerdict("absent", "/nonexistent does not exist", "qemu")
    checks = by_name(host(kvm="absent", kvm_reason=verdict.reason), verdict)
    assert checks["kvm"].status == "warn"
    assert checks["kvm"].detail.startswith("absent: /nonexistent does not exist")


def test_missing_image_fails() -> None:
    verdict = KvmVerdict(
        "present-but-unusable", "not built (run `make images`)", "qemu", blocking=True
    )
    checks = by_name(host(kvm_reason=verdict.reason), verdict)
    assert checks["kvm"].status == "fail"
    assert "make images" in checks["kvm"].detail


def test_unreachable_libvirt_fails_with_the_remedy() -> None:
    info = LibvirtInfo(
        uri="qemu:///system",
        reachable=False,
        error="cannot reach libvirt at qemu:///system (Failed to connect socket): is libvirtd "
        "running on this host? (start it with `virtlogd -d && libvirtd -d`, or ...)",
    )
    facts = host(libvirt=info, daemons={"libvirtd": False, "virtlogd": True})
    checks = by_name(facts, KvmVerdict("present-but-unusable", "unreachable", "qemu"))
    report = DoctorReport(facts, list(checks.values()))
    assert not report.ok
    assert checks["libvirt"].status == "fail" and "libvirtd -d" in checks["libvirt"].detail
    assert checks["daemons"].status == "fail"
    assert checks["kvm"].status == "fail"
    assert any(f.startswith("libvirt: cannot reach libvirt") for f in report.failures)


def test_virtlogd_down_fails() -> None:
    check = by_name(host(daemons={"libvirtd": True, "virtlogd": False}))["daemons"]
    assert check.status == "fail" and "virtlogd -d" in check.detail


def test_modular_daemons_only_warn() -> None:
    check = by_name(host(daemons={"libvirtd": False, "virtlogd": True}))["daemons"]
    assert check.status == "warn"


def test_reserved_hugepages_without_hugetlbfs_fail() -> None:
    checks = by_name(host(hugetlbfs_mounts=[]))
    assert checks["hugetlbfs"].status == "fail"
    assert "mount -t hugetlbfs" in checks["hugetlbfs"].detail


def test_no_hugepages_warns() -> None:
    checks = by_name(host(hugepages=[], hugetlbfs_mounts=[]))
    assert checks["hugepages"].status == "warn"
    assert checks["hugetlbfs"].status == "warn"


@pytest.mark.parametrize("changes", [{"memlock_limit_kib": None}, {"cap_sys_resource": True}])
def test_memory_locking_possible(changes: dict[str, Any]) -> None:
    check = by_name(host(**changes))["memlock"]
    assert check.status == "ok" and NO_LOCKING not in check.detail


def test_cgroups_missing_and_v2() -> None:
    assert by_name(host(cgroup_version=None, cgroup_controllers=[]))["cgroups"].status == "warn"
    v2 = by_name(
        host(
            cgroup_version=2,
            cgroup_controllers=["cpu", "cpuset", "memory", "io"],
            rt_group_sched=False,
            rt_runtime_us_root=None,
        )
    )
    assert v2["cgroups"].status == "ok" and v2["cgroups"].detail.startswith("v2:")
    assert "no RT group scheduling" in v2["realtime"].detail
    partial = by_name(host(cgroup_controllers=["cpu", "memory"]))["cgroups"]
    assert partial.status == "warn" and "missing cpuset" in partial.detail


def test_single_cpu_and_isolated_cpus() -> None:
    one = by_name(host(cpus=[CpuInfo(id=0)]))
    assert one["cpus"].status == "warn"
    iso = by_name(
        host(
            cpus=[CpuInfo(id=i, core=i) for i in range(4)] + [CpuInfo(id=4, online=False)],
            isolated_cpus=[2, 3],
        )
    )
    assert iso["isolated cpus"].detail.startswith("2-3")
    assert "offline: 4" in iso["cpus"].detail


def test_report_json_shape() -> None:
    facts = host()
    report = DoctorReport(facts, run_checks(facts, TCG_VERDICT), TCG_VERDICT)
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"facts", "checks", "ok", "kvm_probe"}
    assert HostFacts.model_validate(data["facts"]) == facts
    assert all(set(c) == {"name", "status", "detail"} for c in data["checks"])
    assert data["ok"] is True
    assert data["kvm_probe"]["source"] == "booted"


def test_no_kvm_and_no_tcg_fails() -> None:
    verdict = KvmVerdict("absent", "/dev/kvm does not exist, and no TCG", "qemu", blocking=True)
    check = by_name(host(kvm="absent", kvm_reason=verdict.reason), verdict)["kvm"]
    assert check.status == "fail"


@pytest.mark.parametrize(
    ("allowed", "status", "says"),
    [
        (True, "ok", "post-copy migrations can land here"),
        (False, "warn", "vm.unprivileged_userfaultfd is 0"),
        (None, "ok", "not known"),
    ],
)
def test_postcopy_destination_readiness(allowed: bool | None, status: str, says: str) -> None:
    check = by_name(host(userfaultfd_unprivileged=allowed))["postcopy"]
    assert check.status == status and says in check.detail
