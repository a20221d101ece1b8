"""`kvmctl doctor` against the real libvirtd and QEMU of this host.

On the CI hosts /dev/kvm exists and libvirt lists KVM, but a guest hangs
under it, so the verdict is `present-but-unusable` and kvmctl falls back to
TCG. Each test points KVMCTL_RUN_DIR at its own directory, so the probe cache
it reads or writes is its own and the host's /run/kvmctl is left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from kvmctl.adapters import libvirt as lv
from kvmctl.host import images, kvmprobe, probeguest
from kvmctl.host.facts import HostFacts
from tests.integration.cockpit_helpers import URI, cli_env, kvmctl_popen

pytestmark = [pytest.mark.integration, pytest.mark.no_set]

FirstProbe = tuple[Path, dict[str, Any], float, int]  # run dir, doctor JSON, seconds, pid


@dataclass
class Run:
    result: subprocess.CompletedProcess[str]
    seconds: float
    pid: int

    def __iter__(self) -> Iterator[Any]:
        return iter((self.result, self.seconds))


def kvmctl(*args: str, **env: str) -> Run:
    t0 = time.monotonic()
    with kvmctl_popen(
        *args, env=cli_env(None, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        out, err = proc.communicate(timeout=180)
    seconds = time.monotonic() - t0
    assert "Traceback" not in err, err
    return Run(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), seconds, proc.pid)


def probe_domains(conn: libvirt.virConnect, pid: int) -> list[str]:
    """Probe domains left by process `pid` (other runs may be probing at the same time)."""
    return [
        d.name()
        for d in conn.listAllDomains()
        if d.name().startswith("kvmctl-probe-") and f"-{pid}-" in d.name()
    ]


def checks(data: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {c["name"]: c for c in data["checks"]}


@pytest.fixture(scope="module")
def first_probe(
    guest_images: dict[str, images.GuestImage], tmp_path_factory: pytest.TempPathFactory
) -> FirstProbe:
    """One doctor run that boots the probe guests, into a run dir of this module's own."""
    run_dir = tmp_path_factory.mktemp("kvmctl-run")
    run = kvmctl("doctor", "--json", "-c", URI, KVMCTL_RUN_DIR=str(run_dir))
    assert run.result.returncode == 0, run.result.stderr
    return run_dir, json.loads(run.result.stdout), run.seconds, run.pid


def test_this_host_is_present_but_unusable_and_runs_tcg(
    first_probe: FirstProbe, libvirt_conn: libvirt.virConnect
) -> None:
    run_dir, data, seconds, pid = first_probe
    facts = HostFacts.model_validate(data["facts"])
    assert facts.kvm == "present-but-unusable"
    assert facts.virt_type == "qemu"
    assert "did not reach user space within 8 s" in facts.kvm_reason
    assert "under TCG in" in facts.kvm_reason
    probe = data["kvm_probe"]
    assert probe["source"] == "booted" and probe["tcg_ok"] is True
    assert probe["kvm_seconds"] >= kvmprobe.DEFAULT_TIMEOUT
    assert probe["tcg_seconds"] < 30
    assert seconds >= kvmprobe.DEFAULT_TIMEOUT
    assert data["ok"] is True
    kvm = checks(data)["kvm"]
    assert (
        kvm["status"] == "warn" and "TCG" in kvm["detail"] and "not representative" in kvm["detail"]
    )
    # The probe guests are gone, and so are their serial logs.
    assert probe_domains(libvirt_conn, pid) == []
    assert [p.name for p in run_dir.iterdir()] == [kvmprobe.CACHE_NAME]


def test_facts_match_the_host(first_probe: FirstProbe) -> None:
    _, data, _, _ = first_probe
    facts = HostFacts.model_validate(data["facts"])
    assert facts.libvirt is not None and facts.libvirt.reachable
    assert facts.libvirt.daemon_version and facts.libvirt.hypervisor_version
    assert facts.daemons == {"libvirtd": True, "virtlogd": True}
    assert len(facts.cpu_ids) == os.cpu_count()
    assert facts.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    # The pool size may be changed by host setup running meanwhile: check its shape.
    two_mib = [p for p in facts.hugepages if p.size_kib == 2048]
    assert two_mib and all(0 <= p.free <= p.total for p in two_mib)
    mounted = [
        line.split()[1]
        for line in Path("/proc/mounts").read_text().splitlines()
        if line.split()[2] == "hugetlbfs"
    ]
    assert facts.hugetlbfs_mounts == mounted
    names = {c["name"] for c in data["checks"]}
    assert {
        "libvirt",
        "daemons",
        "kvm",
        "cpus",
        "isolated cpus",
        "hugepages",
        "hugetlbfs",
        "memlock",
        "cgroups",
        "realtime",
    } <= names
    memlock = checks(data)["memlock"]
    if not facts.can_lock_memory:
        assert memlock["status"] == "warn"
        assert (
            "locked memory and memory hard limits are impossible on this host" in memlock["detail"]
        )


def test_second_run_uses_the_cache_and_reprobe_boots_again(
    first_probe: FirstProbe, libvirt_conn: libvirt.virConnect
) -> None:
    run_dir, first, first_seconds, _ = first_probe
    again, seconds = kvmctl("doctor", "--json", "-c", URI, KVMCTL_RUN_DIR=str(run_dir))
    assert again.returncode == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["kvm_probe"]["source"] == "cached"
    assert data["facts"]["kvm"] == first["facts"]["kvm"]
    assert data["facts"]["kvm_reason"] == first["facts"]["kvm_reason"]
    assert seconds < 5 and seconds < first_seconds / 2
    assert "--reprobe" in checks(data)["kvm"]["detail"]

    fresh_run = kvmctl("doctor", "--json", "--reprobe", "-c", URI, KVMCTL_RUN_DIR=str(run_dir))
    fresh, fresh_seconds = fresh_run
    assert fresh.returncode == 0, fresh.stderr
    data = json.loads(fresh.stdout)
    assert data["kvm_probe"]["source"] == "booted"
    assert data["facts"]["kvm"] == "present-but-unusable"
    assert fresh_seconds >= kvmprobe.DEFAULT_TIMEOUT
    assert probe_domains(libvirt_conn, fresh_run.pid) == []


def test_table_is_plain_lines_when_piped(first_probe: FirstProbe) -> None:
    run_dir, _, _, _ = first_probe
    result, _ = kvmctl("doctor", "-c", URI, KVMCTL_RUN_DIR=str(run_dir))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# kvmctl doctor")
    assert lines[1] == "check\tstatus\tdetail"
    rows = {line.split("\t")[0]: line.split("\t") for line in lines[2:]}
    assert rows["kvm"][1] == "warn" and rows["kvm"][2].startswith("present-but-unusable")
    assert rows["libvirt"][1] == "ok"


def test_missing_device_is_absent_without_booting(
    tmp_path: Path, libvirt_conn: libvirt.virConnect
) -> None:
    result, seconds = kvmctl(
        "doctor",
        "--json",
        "-c",
        URI,
        KVMCTL_KVM_DEVICE="/nonexistent",
        KVMCTL_RUN_DIR=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["facts"]["kvm"] == "absent"
    assert data["facts"]["virt_type"] == "qemu"
    assert "/nonexistent does not exist" in data["facts"]["kvm_reason"]
    assert data["kvm_probe"]["source"] == "not-probed"
    assert seconds < kvmprobe.DEFAULT_TIMEOUT
    assert list(tmp_path.iterdir()) == []  # nothing booted, nothing cached


def test_device_qemu_cannot_open_is_unusable_with_the_fix(tmp_path: Path) -> None:
    """A real KVM device node that libvirt's QEMU user may not open (root:root 0600)."""
    node = tmp_path / "kvm"
    os.mknod(node, 0o600 | 0o020000, os.makedev(10, 232))
    os.chown(node, 0, 0)
    result, seconds = kvmctl(
        "doctor", "--json", "-c", URI, KVMCTL_KVM_DEVICE=str(node), KVMCTL_RUN_DIR=str(tmp_path)
    )
    data = json.loads(result.stdout)
    assert data["facts"]["kvm"] == "present-but-unusable"
    assert "chmod 0660" in data["facts"]["kvm_reason"]
    assert "0600" in data["facts"]["kvm_reason"]
    assert result.returncode == 0  # TCG remains
    assert seconds < kvmprobe.DEFAULT_TIMEOUT


def test_missing_image_fails_with_make_images(tmp_path: Path) -> None:
    empty = tmp_path / "images"
    empty.mkdir()
    result, _ = kvmctl(
        "doctor", "-c", URI, KVMCTL_IMAGE_DIR=str(empty), KVMCTL_RUN_DIR=str(tmp_path / "run")
    )
    assert result.returncode == 3
    assert result.stderr.startswith("kvmctl: this host cannot run a cockpit yet:")
    assert "make images" in result.stderr
    assert "\tfail\t" in result.stdout


def test_facts_out_is_loadable_by_the_planner(first_probe: FirstProbe, tmp_path: Path) -> None:
    run_dir, _, _, _ = first_probe
    out = tmp_path / "host.json"
    result, _ = kvmctl("doctor", "-c", URI, "--facts-out", str(out), KVMCTL_RUN_DIR=str(run_dir))
    assert result.returncode == 0, result.stderr
    facts = HostFacts.load(out)
    assert facts.kvm == "present-but-unusable" and facts.virt_type == "qemu"
    out2 = tmp_path / "facts.json"
    result, _ = kvmctl("facts", "-c", URI, "-o", str(out2), KVMCTL_RUN_DIR=str(run_dir))
    assert result.returncode == 0, result.stderr
    # Other tests may add bridges or take hugepages meanwhile: compare what holds still.
    stable = {
        "boot_id",
        "kvm",
        "kvm_reason",
        "virt_type",
        "cpus",
        "memlock_limit_kib",
        "cap_sys_resource",
        "cgroup_version",
        "cgroup_controllers",
        "hugetlbfs_mounts",
    }
    assert HostFacts.load(out2).model_dump(include=stable) == facts.model_dump(include=stable)


# --- the adapter's probe boot, directly ------------------------------------------------------


@pytest.fixture
def adapter() -> Iterator[lv.Libvirt]:
    with lv.connect(URI) as conn:
        yield conn


def test_probe_guest_reaches_user_space_under_tcg(
    guest_images: dict[str, images.GuestImage], adapter: lv.Libvirt, tmp_path: Path
) -> None:
    image, problem = probeguest.locate_image()
    assert image is not None, problem
    boot = kvmprobe.libvirt_booter(adapter.boot_until_marker, image, timeout=60, workdir=tmp_path)
    result = boot("qemu")
    assert result.reached, result
    assert result.seconds < 60
    assert probeguest.PROBE_MARKER in result.output  # type: ignore[attr-defined]
    assert probe_domains(adapter.conn, os.getpid()) == []
    assert list(tmp_path.iterdir()) == []


def test_boot_that_never_prints_the_marker_times_out_and_is_destroyed(
    guest_images: dict[str, images.GuestImage], adapter: lv.Libvirt, tmp_path: Path
) -> None:
    image, problem = probeguest.locate_image()
    assert image is not None, problem
    log = tmp_path / "serial.log"
    xml = probeguest.probe_domain_xml(f"kvmctl-probe-never-{os.getpid()}-x", "qemu", image, log)
    result = adapter.boot_until_marker(xml, log, "A-MARKER-NO-GUEST-PRINTS", timeout=3)
    assert not result.reached and not result.start_error
    # The guest may power itself off first (the probe image does), else the wait
    # runs into the timeout; either way it ends, bounded.
    assert result.stopped_early or 3 <= result.seconds
    assert result.seconds < 10
    assert probe_domains(adapter.conn, os.getpid()) == []


def test_refused_start_is_reported_not_raised(
    guest_images: dict[str, images.GuestImage], adapter: lv.Libvirt, tmp_path: Path
) -> None:
    image, _ = probeguest.locate_image()
    assert image is not None
    log = tmp_path / "serial.log"
    xml = probeguest.probe_domain_xml(f"kvmctl-probe-refused-{os.getpid()}-x", "qemu", image, log)
    xml = xml.replace(str(image.kernel), str(tmp_path / "no-such-kernel"))
    result = adapter.boot_until_marker(xml, log, probeguest.PROBE_MARKER, timeout=5)
    assert not result.reached
    assert result.start_error and "no-such-kernel" in result.start_error
    assert probe_domains(adapter.conn, os.getpid()) == []
