"""A set spread over two hosts ("many chips, many screens"): this host and a
lab host (kvmctl.testing) reached only through its libvirt, over the lab's
private veth. plan/apply/status/destroy go across both."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmctl.host import threads
from kvmctl.planner.cpuset import format_cpuset
from kvmctl.testing import labops
from kvmctl.testing.lab import LabState
from tests.integration.cockpit_helpers import (
    REPO,
    URI,
    domain_states,
    kvmctl,
    kvmctl_json,
    libvirt_objects,
    sweep,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.ops_helpers import SupervisorProcess, guest_run

# The set here dedicates no CPU (the safety VM is shared with a high weight), so
# it runs in the parallel part; only the real-time test's VM is dedicated.
pytestmark = pytest.mark.integration

SPEC = """\
name: {name}
host: {{housekeeping_cpus: [{housekeeping}]}}
hosts:
  lab: {{uri: "{lab_uri}", virt_type: qemu}}
networks:
  bus: {{bridge: {name}b, subnet: 10.253.{net}.0/24}}
vms:
  cluster:
    criticality: safety
    cpu: {{placement: shared, shares: 2048}}
    memory: {{size: 128MiB}}
    disk: {{size: 16MiB}}
    networks: [bus]
    ready: {{probe: agent, timeout: 90s}}
  ivi:
    host: lab
    depends_on: [cluster]
    cpu: {{placement: shared, shares: 512, limit: 50%}}
    memory: {{size: 128MiB, hugepages: 2MiB}}
    disk: {{size: 16MiB}}
    networks: {ivi_networks}
    ready: {ivi_ready}
"""


class TwoHostSet:
    def __init__(self, tmp: Path, lab: LabState):
        self.name = f"kvt-mh-{secrets.token_hex(3)}"
        self.lab = lab
        self.tmp = tmp
        self.spec = self.write()

    def write(
        self,
        ivi_networks: str = "[]",
        ivi_ready: str = "{probe: agent, timeout: 90s}",
        lab_uri: str | None = None,
    ) -> Path:
        text = SPEC.format(
            name=self.name,
            housekeeping=worker_housekeeping_cpu(),
            lab_uri=lab_uri or self.lab.uri,
            net=secrets.randbelow(200) + 20,
            ivi_networks=ivi_networks,
            ivi_ready=ivi_ready,
        )
        return write_spec(self.tmp, text)

    def domains(self, uri: str) -> dict[str, int]:
        return domain_states(self.name, uri)

    def volumes(self, uri: str) -> list[str]:
        return libvirt_objects(self.name, uri)["volumes"]

    def nothing_anywhere(self) -> None:
        assert self.domains(URI) == {} and self.domains(self.lab.uri) == {}
        assert self.volumes(URI) == [] and self.volumes(self.lab.uri) == []
        assert not Path(f"/sys/class/net/{self.name}b").exists()


@pytest.fixture
def two(tmp_path: Path, kvmctl_lab: LabState) -> Iterator[TwoHostSet]:
    s = TwoHostSet(tmp_path, kvmctl_lab)
    try:
        yield s
    finally:
        sweep(s.name)
        sweep(s.name, kvmctl_lab.uri)


def test_a_set_over_two_hosts_applies_in_order_reads_back_and_goes(two: TwoHostSet) -> None:
    plan = kvmctl_json("plan", str(two.spec))
    by_host = {h["host"]: h for h in plan["hosts"]}
    assert [v["vm"] for v in by_host[None]["vms"]] == ["cluster"]
    assert [v["vm"] for v in by_host["lab"]["vms"]] == ["ivi"]
    assert by_host["lab"]["virt_type"] == "qemu" and by_host["lab"]["uri"] == two.lab.uri

    applied = kvmctl_json("apply", str(two.spec))
    vms = applied["vms"]
    assert vms["cluster"]["host"] == URI and vms["ivi"]["host"] == "lab"
    # ivi depends on cluster: its host is applied once cluster answers.
    assert vms["ivi"]["started_at"] >= vms["cluster"]["ready_at"]
    assert two.domains(URI) == {f"{two.name}-cluster": libvirt.VIR_DOMAIN_RUNNING}
    ivi = f"{two.name}-ivi"
    assert two.domains(two.lab.uri) == {ivi: libvirt.VIR_DOMAIN_RUNNING}
    assert guest_run(ivi, "/bin/cat", "/proc/cmdline", uri=two.lab.uri)  # the guest answers

    # What is in force on the lab, read where it lives: the lab QEMU's threads
    # and cgroup; status (through the lab's libvirt) reports the same.
    pid = threads.qemu_pid(ivi, str(two.lab.path("/run/libvirt/qemu")))
    assert pid is not None
    proc = threads.inspect(pid)
    planned = by_host["lab"]["vms"][0]["vcpus"]
    assert [format_cpuset(t.affinity) for t in proc.vcpus] == list(planned.values())
    assert proc.hugetlb_kib == 128 * 1024
    vdir = threads.cgroup_dir(proc.vcpus[0].tid, "cpu", pid)
    assert vdir is not None and int((vdir / "cpu.cfs_quota_us").read_text()) == 50_000

    status = {r["vm"]: r for r in kvmctl_json("status", str(two.spec))["vms"]}
    assert status["ivi"]["host"] == "lab" and status["cluster"]["host"] is None
    assert status["ivi"]["vcpus_actual"] == list(planned.values())
    assert status["ivi"]["quota_us"] == 50_000 and status["ivi"]["shares"] == 512
    assert status["ivi"]["ready"] is True and status["ivi"]["drift"] == []
    assert status["cluster"]["drift"] == []

    again = kvmctl_json("apply", str(two.spec))
    assert again["changed"] is False

    gone = kvmctl_json("destroy", str(two.spec))
    assert sorted(gone["domains"]) == [f"{two.name}-cluster", ivi]
    two.nothing_anywhere()


def test_preflight_covers_every_host_before_anything_is_created(two: TwoHostSet) -> None:
    """The bridge is missing on the lab: exit 3 naming it, nothing created on
    this host either (not even cluster, whose host is fine)."""
    two.spec = two.write(ivi_networks="[bus]")
    run = kvmctl("apply", str(two.spec))
    assert run.returncode == 3, run.stderr
    assert f"bridge '{two.name}b' of network 'bus' is missing on lab" in run.stderr
    assert "--host lab" in run.stderr
    two.nothing_anywhere()


def test_a_failing_second_host_rolls_back_the_first(two: TwoHostSet) -> None:
    """cluster is created and ready here, then ivi never gets ready on the lab:
    exit 1, and this run's work is undone on both hosts."""
    two.spec = two.write(ivi_ready='{probe: "serial:NEVER-PRINTED", timeout: 3s}')
    run = kvmctl("apply", str(two.spec))
    assert run.returncode == 1, run.stderr
    assert f"what this run did on {URI} was rolled back" in run.stderr, run.stderr
    two.nothing_anywhere()


def test_an_unreachable_host_is_a_state_in_status_and_stops_apply(two: TwoHostSet) -> None:
    """The lab's address on a port nobody listens on: status still shows this
    host's VM and calls the other unreachable; apply creates nothing."""
    gone = f"qemu+tcp://{two.lab.lab_address}:1/system"
    two.spec = two.write(lab_uri=gone)
    rows = {r["vm"]: r for r in kvmctl_json("status", str(two.spec))["vms"]}
    assert (rows["cluster"]["host"], rows["cluster"]["state"]) == (None, "absent")
    assert (rows["ivi"]["host"], rows["ivi"]["state"]) == ("lab", "unreachable")
    assert rows["ivi"]["drift"][0].startswith(f"lab ({gone}): ")
    run = kvmctl("apply", str(two.spec))
    assert run.returncode == 3, run.stderr
    assert gone in run.stderr
    two.nothing_anywhere()


def test_a_remote_hosts_kvm_is_probed_by_booting_a_guest_there(two: TwoHostSet) -> None:
    """Without virt_type the lab's KVM is judged by a probe guest booted
    through its libvirt. The lab runs on this machine, so the verdict must be
    this host's own; the probe guest is gone afterwards."""
    two.spec.write_text(two.spec.read_text().replace(", virt_type: qemu", ""))
    plans = {h["host"]: h for h in kvmctl_json("plan", str(two.spec))["hosts"]}
    assert plans["lab"]["virt_type"] == plans[None]["virt_type"]
    (probe,) = [w for w in plans["lab"]["warnings"] if w.startswith(f"KVM on {two.lab.uri}: ")]
    assert "probe guest" in probe
    conn = libvirt.open(two.lab.uri)
    try:
        assert [d.name() for d in conn.listAllDomains() if "probe" in d.name()] == []
    finally:
        conn.close()


def test_a_supervisor_per_host_restarts_its_own_vm_there(two: TwoHostSet, tmp_path: Path) -> None:
    """`kvmctl supervise --host lab` (as it would run on that SoC) watches only
    the lab's VM and restarts it there when its QEMU is killed."""
    kvmctl_json("apply", str(two.spec))
    ivi = f"{two.name}-ivi"
    lab_run = str(two.lab.path("/run/libvirt/qemu"))
    state = tmp_path / "sup"
    state.mkdir()
    sup = SupervisorProcess(two.spec, state, "--host", "lab", "-c", two.lab.uri)
    try:
        started = sup.wait(30, event="supervising")
        assert sorted(started["vms"]) == ["ivi"]
        sup.wait(30, event="observed", vm="ivi")
        old = threads.qemu_pid(ivi, lab_run)
        assert old is not None
        mark = sup.mark()
        os.kill(old, signal.SIGKILL)
        sup.wait(120, since=mark, event="restarted", vm="ivi")
        new = threads.qemu_pid(ivi, lab_run)
        assert new is not None and new != old
        assert two.domains(two.lab.uri) == {ivi: libvirt.VIR_DOMAIN_RUNNING}
        assert two.domains(URI) == {f"{two.name}-cluster": libvirt.VIR_DOMAIN_RUNNING}
    finally:
        sup.terminate()
    kvmctl_json("destroy", str(two.spec))


def test_a_bridge_of_another_hosts_network_is_left_alone_on_the_lab(two: TwoHostSet) -> None:
    """The lab has a bridge named like the network only this host uses: the
    lab's plan neither wants it nor plans to delete it."""
    bridge = f"{two.name}b"
    inside = ["ip", "netns", "exec", two.lab.netns, "ip", "link"]
    subprocess.run([*inside, "add", bridge, "type", "bridge"], check=True)
    try:
        plans = {h["host"]: h for h in kvmctl_json("plan", str(two.spec))["hosts"]}
        assert plans["lab"]["bridges"] == [] and plans["lab"]["problems"] == []
    finally:
        subprocess.run([*inside, "del", bridge], check=True)


def test_one_host_alone_is_planned_on_the_given_connection(two: TwoHostSet) -> None:
    """`--host lab` is kvmctl running on the lab host (as the Ansible cockpit
    role runs it): only ivi, planned on -c."""
    plan = kvmctl_json("plan", str(two.spec), "--host", "lab")
    (only,) = plan["hosts"]
    assert (only["host"], only["uri"]) == ("lab", URI)
    assert [v["vm"] for v in only["vms"]] == ["ivi"]
    for verb in ("plan", "audit", "status", "screens"):
        extra = ["-o", str(two.tmp / "s.png")] if verb == "screens" else []
        run = kvmctl(verb, str(two.spec), "--host", "nowhere", *extra)
        assert run.returncode == 2 and "no host 'nowhere'" in run.stderr, (verb, run.stderr)


RT_SPEC = """\
name: {name}
host: {{housekeeping_cpus: [0]}}
hosts:
  lab: {{uri: "{lab_uri}", virt_type: qemu}}
vms:
  c:
{host}    criticality: safety
    cpu: {{placement: dedicated, realtime: {{policy: fifo, priority: 10}}}}
    memory: {{size: 128MiB}}
    image: {{builtin: test-guest-rt}}
    disk: {{size: 16MiB}}
    ready: {{probe: agent, timeout: 90s}}
"""


@pytest.mark.dedicated_cpus
def test_a_migrated_vm_gets_real_time_back_from_kvmctl_on_its_new_host(two: TwoHostSet) -> None:
    """libvirt does not carry kvmctl's per-thread real-time policy: the VM
    arrives SCHED_OTHER. Named by its VM name alone, it is moved; kvmctl run on
    the lab host (its namespaces, its own libvirt), with the spec now placing
    the VM there, makes it FIFO 10 again in the running QEMU."""
    text = RT_SPEC.format(name=two.name, lab_uri=two.lab.uri, host="")
    spec = write_spec(two.tmp, text)
    kvmctl_json("apply", str(spec))
    dom = f"{two.name}-c"
    run = kvmctl("migrate", "c", "--to", two.lab.uri, "--insecure", "--copy-storage")
    assert run.returncode == 0, run.stderr
    lab_run = str(two.lab.path("/run/libvirt/qemu"))
    pid = threads.qemu_pid(dom, lab_run)
    assert pid is not None
    assert [t.policy for t in threads.inspect(pid).vcpus] == ["other"]

    spec.write_text(RT_SPEC.format(name=two.name, lab_uri=two.lab.uri, host="    host: lab\n"))
    there = subprocess.run(
        [*labops.inside(two.lab), sys.executable, "-m", "kvmctl.cli", "apply", str(spec)]
        + ["--host", "lab", "-c", "qemu:///system", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert there.returncode == 0, there.stderr
    assert json.loads(there.stdout)["vms"]["c"]["action"] == "update-live"
    vcpus = threads.inspect(pid).vcpus  # the same QEMU, not restarted
    assert [(t.policy, t.priority) for t in vcpus] == [("fifo", 10)]


def test_a_vm_moved_to_another_host_is_left_there_and_not_started_twice(two: TwoHostSet) -> None:
    """cluster (placed with the VMs without host:) is migrated to the lab. The
    lab's plan leaves it alone (no delete), a whole-set apply refuses to start
    a second copy here, and `destroy --host lab` removes only the lab's part."""
    kvmctl_json("apply", str(two.spec))
    cluster, ivi = f"{two.name}-cluster", f"{two.name}-ivi"
    bridge = ["ip", "netns", "exec", two.lab.netns, "ip", "link"]  # cluster's bus, there too
    subprocess.run([*bridge, "add", f"{two.name}b", "type", "bridge"], check=True)
    try:
        _moved_cluster_stays_on_the_lab(two, cluster, ivi)
    finally:
        subprocess.run([*bridge, "del", f"{two.name}b"], check=False)
    two.nothing_anywhere()


def _moved_cluster_stays_on_the_lab(two: TwoHostSet, cluster: str, ivi: str) -> None:
    run = kvmctl(
        "migrate", "cluster", "--to", two.lab.uri, "--insecure", "--copy-storage", timeout=300
    )
    assert run.returncode == 0, run.stderr
    running = libvirt.VIR_DOMAIN_RUNNING
    assert two.domains(two.lab.uri) == {cluster: running, ivi: running}

    plans = {h["host"]: h for h in kvmctl_json("plan", str(two.spec))["hosts"]}
    assert [a["vm"] for a in plans["lab"]["actions"]] == ["ivi"]  # no delete of cluster
    assert any("VM 'cluster' runs here" in n for n in plans["lab"]["notes"])
    again = kvmctl("apply", str(two.spec))
    assert again.returncode == 3, again.stderr
    assert "VM 'cluster' runs on lab but the spec places it on" in again.stderr
    assert two.domains(URI) == {}

    gone = kvmctl_json("destroy", str(two.spec), "--host", "lab", "-c", two.lab.uri)
    assert gone["domains"] == [ivi]
    assert two.domains(two.lab.uri) == {cluster: running}
    kvmctl_json("destroy", str(two.spec))
    assert two.domains(two.lab.uri) == {} and two.domains(URI) == {}
