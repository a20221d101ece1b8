"""Golden domain and volume XML for every example spec, on a fixed host.

The XML is also checked against libvirt's own schema (virt-xml-validate) and
parsed back into the object model unchanged.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kvmctl.planner.domain import build_domain, build_volume
from kvmctl.planner.plan import make_plan
from kvmctl.spec import load_spec
from kvmctl.xml.domain import Domain
from tests.golden import assert_golden
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
CASES = [
    ("cockpit.yaml", 2, "present-but-unusable"),
    ("cockpit-4core.yaml", 4, "usable"),
    ("cockpit-channels.yaml", 2, "present-but-unusable"),
    ("cockpit-debian.yaml", 2, "present-but-unusable"),
]


def _plans(example: str, cpus: int, kvm: str):  # type: ignore[no-untyped-def]
    plan = make_plan(load_spec(ROOT / "examples" / example), facts(cpus=cpus, kvm=kvm))
    assert plan.problems == []
    return plan


@pytest.mark.parametrize("host", ["soc-a", "soc-b"])
def test_two_socs_golden_per_host(host: str, regenerate: bool) -> None:
    """Each SoC of the multi-host example is planned on its own facts: both
    hand out their CPU 1 (cluster on soc-a, ivi on soc-b)."""
    plan = make_plan(
        load_spec(ROOT / "examples" / "cockpit-two-socs.yaml"), facts(cpus=2), host=host
    )
    assert plan.problems == []
    assert sorted(plan.vms) == {"soc-a": ["cluster", "hud"], "soc-b": ["ivi", "passenger"]}[host]
    for name, vm_plan in plan.vms.items():
        xml = build_domain(vm_plan, rt_by_thread=True).to_xml()
        assert_golden(GOLDEN / "cockpit-two-socs" / f"{name}.xml", xml, regenerate)


@pytest.mark.parametrize(("example", "cpus", "kvm"), CASES)
def test_domain_xml_golden(
    example: str, cpus: int, kvm: str, regenerate: bool, tmp_path: Path
) -> None:
    plan = _plans(example, cpus, kvm)
    for name, vm_plan in plan.vms.items():
        domain = build_domain(vm_plan, rt_by_thread=True)
        xml = domain.to_xml()
        stem = example.removesuffix(".yaml")
        assert_golden(GOLDEN / stem / f"{name}.xml", xml, regenerate)
        assert_golden(
            GOLDEN / stem / f"{name}.volume.xml", build_volume(vm_plan).to_xml(), regenerate
        )
        assert Domain.from_xml(xml) == domain
        # virt-xml-validate shells out to xmllint (libxml2-utils, installed by the role).
        if shutil.which("virt-xml-validate") and shutil.which("xmllint"):
            path = tmp_path / f"{name}.xml"
            path.write_text(xml)
            run = subprocess.run(
                ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True
            )
            assert run.returncode == 0, run.stderr


def test_vcpusched_only_without_rt_group_scheduling() -> None:
    plan = _plans("cockpit.yaml", 2, "present-but-unusable")
    cluster = plan.vms["cluster"]
    by_thread = build_domain(cluster, rt_by_thread=True)
    assert by_thread.cputune is not None and by_thread.cputune.vcpuscheds == ()
    in_xml = build_domain(cluster, rt_by_thread=False)
    assert in_xml.cputune is not None
    (sched,) = in_xml.cputune.vcpuscheds
    assert (sched.vcpus, sched.scheduler, sched.priority) == ("0", "fifo", 10)


def test_what_the_example_promises_is_in_the_xml() -> None:
    plan = _plans("cockpit.yaml", 2, "present-but-unusable")
    cluster = build_domain(plan.vms["cluster"], rt_by_thread=True)
    assert cluster.type == "qemu"
    assert cluster.cputune is not None
    assert [(p.vcpu, p.cpuset) for p in cluster.cputune.vcpupins] == [(0, "1")]
    assert cluster.cputune.emulatorpin == "0"
    assert cluster.memory_backing is not None and cluster.memory_backing.hugepages is not None
    assert cluster.memory_backing.hugepages[0].size_kib == 2048
    assert cluster.devices.watchdog is not None and cluster.devices.watchdog.action == "reset"
    assert cluster.devices.memballoon is not None and cluster.devices.memballoon.model == "none"
    ivi = build_domain(plan.vms["ivi"], rt_by_thread=True)
    assert ivi.cputune is not None
    assert (ivi.cputune.shares, ivi.cputune.period, ivi.cputune.quota) == (1024, 100000, 80000)
    assert ivi.memory_backing is None
    disk = ivi.devices.disks[0]
    assert disk.iotune is not None and disk.iotune.total_iops_sec == 1000
    assert ivi.devices.interfaces[0].source_bridge == "kvbr-media"
    kvm = build_domain(_plans("cockpit-4core.yaml", 4, "usable").vms["cluster"], rt_by_thread=True)
    assert kvm.type == "kvm" and kvm.cpu is not None and kvm.cpu.mode == "host-model"


@pytest.mark.parametrize(
    ("policy", "on_crash"), [("always", "restart"), ("on-failure", "restart"), ("never", "destroy")]
)
def test_a_panic_is_reported_and_handled_per_restart_policy(policy: str, on_crash: str) -> None:
    # pvpanic device for the guest to report panics through; on_crash follows
    # the restart policy (in-place reset unless the VM is never restarted).
    cockpit = spec(f"name: demo-cockpit\nvms:\n  a: {{restart: {{policy: {policy}}}}}\n")
    plan = make_plan(cockpit, facts(cpus=2))
    dom = build_domain(plan.vms["a"], rt_by_thread=True)
    assert [p.model for p in dom.devices.panics] == ["isa"]
    assert dom.on_crash == on_crash


def test_names_with_metacharacters_never_reach_xml() -> None:
    # The spec layer refuses them; the XML layer refuses them again.
    with pytest.raises(ValueError):
        Domain(type="qemu", name="a<b", memory_kib=1024, vcpus=1)
