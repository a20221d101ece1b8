"""`kvmctl migrate` between this host's libvirtd and a lab host (kvmctl.testing):
real guests move over the lab's private veth, under TCG."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

from kvmctl.adapters.storage import refresh_pool
from kvmctl.host import threads
from kvmctl.testing import labops
from kvmctl.testing.lab import LabState
from tests.integration.cockpit_helpers import (
    URI,
    domain_states,
    kvmctl,
    kvmctl_popen,
    sweep,
    worker_housekeeping_cpu,
    write_spec,
)
from tests.integration.migration_helpers import plain_move
from tests.integration.ops_helpers import counter, guest_run, tool, wait_until

pytestmark = pytest.mark.integration

SPEC = """\
name: {name}
host: {{housekeeping_cpus: [{housekeeping}]}}
networks:
  bus: {{bridge: {bridge}, subnet: 10.252.{net}.0/24}}
vms:
  a:
    criticality: {criticality}
    cpu: {{placement: {placement}, shares: 512}}
    memory: {{size: 256MiB, hugepages: 2MiB}}
    image: {{builtin: test-guest}}
    disk: {{size: 64MiB}}
    networks: {networks}
    ready: {{probe: agent, timeout: 90s}}
    migration: {migration}
"""


def spec_text(name: str, **kw: object) -> str:
    values = {
        "name": name,
        "housekeeping": worker_housekeeping_cpu(),
        "bridge": f"{name[-6:]}br",
        "net": secrets.randbelow(200) + 20,
        "criticality": "normal",
        "placement": "shared",
        "networks": "[]",
        "migration": "{}",
    }
    values.update(kw)
    return SPEC.format(**values)


class MigSet:
    """A one-VM cockpit applied on this host; removed from both hosts after."""

    def __init__(self, tmp: Path, lab: LabState, **kw: object):
        self.name = f"kvt-mg-{secrets.token_hex(3)}"
        self.domain = f"{self.name}-a"
        self.lab = lab
        self.spec = write_spec(tmp, spec_text(self.name, **kw))

    def apply(self) -> None:
        run = kvmctl("apply", str(self.spec))
        assert run.returncode == 0, run.stderr

    def migrate(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return kvmctl(
            "migrate",
            str(self.spec),
            "a",
            "--to",
            self.lab.uri,
            "--insecure",
            *args,
            timeout=timeout,
        )

    def cleanup(self) -> None:
        sweep(self.name)
        try:
            conn = libvirt.open(self.lab.uri)
        except libvirt.libvirtError:
            return  # the lab is gone, and everything in it
        try:
            for dom in conn.listAllDomains():
                if dom.name().startswith(self.name):
                    if dom.isActive():
                        dom.destroy()
                    dom.undefine()
            _delete_volumes(conn, self.name)
        finally:
            conn.close()


def _delete_volumes(conn: libvirt.virConnect, prefix: str) -> None:
    try:
        pool = conn.storagePoolLookupByName("kvmctl")
    except libvirt.libvirtError:
        return
    refresh_pool(pool)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefix):
            vol.delete(0)


def lab_volumes(lab: LabState, prefix: str) -> list[str]:
    conn = libvirt.open(lab.uri)
    try:
        pool = conn.storagePoolLookupByName("kvmctl")
        refresh_pool(pool)
        return sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith(prefix))
    except libvirt.libvirtError:
        return []  # no pool there: no volumes
    finally:
        conn.close()


def lab_domains(lab: LabState, prefix: str) -> dict[str, int]:
    return domain_states(prefix, lab.uri)


def source_state(domain: str) -> int | None:
    conn = libvirt.open(URI)
    try:
        return conn.lookupByName(domain).state()[0]
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


@pytest.fixture
def mig(tmp_path: Path, kvmctl_lab: LabState) -> Iterator[MigSet]:
    s = MigSet(tmp_path, kvmctl_lab)
    try:
        yield s
    finally:
        s.cleanup()


def test_guest_moves_with_its_disk_and_memory_and_is_pinned_by_the_destination_plan(
    mig: MigSet,
) -> None:
    mig.apply()
    guest_run(mig.domain, "/bin/sh", "-c", "echo moved-with-me > /data/marker; sync")
    tool(mig.domain, "counter", "start")
    time.sleep(1.5)
    before = counter(mig.domain)

    run = mig.migrate("--copy-storage", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["vms"][0]
    assert result["status"] == "completed"
    assert result["downtime_ms"] is not None and result["bytes_moved"] > 0

    # Gone from the source (domain and its now stale volume), running there.
    assert source_state(mig.domain) is None
    assert sweep(mig.name) == []
    assert lab_domains(mig.lab, mig.name) == {mig.domain: libvirt.VIR_DOMAIN_RUNNING}
    uri = mig.lab.uri
    assert guest_run(mig.domain, "/bin/cat", "/data/marker", uri=uri).strip() == "moved-with-me"
    after = counter(mig.domain, uri=uri)
    assert after > before  # the in-memory counter went on counting, not from zero

    # vCPU threads on the destination pinned as the destination plan says.
    pid = threads.qemu_pid(mig.domain, str(mig.lab.path("/run/libvirt/qemu")))
    assert pid is not None
    proc = threads.inspect(pid)
    assert [",".join(map(str, sorted(t.affinity))) for t in proc.vcpus] == [result["pins"]["vcpu0"]]
    assert "HugetlbPages" in Path(f"/proc/{pid}/status").read_text()
    assert (
        int(Path(f"/proc/{pid}/status").read_text().split("HugetlbPages:")[1].split()[0])
        >= 256 * 1024
    )


def test_keep_source_leaves_the_domain_defined_on_the_source(mig: MigSet) -> None:
    mig.apply()
    run = mig.migrate("--copy-storage", "--keep-source")
    assert run.returncode == 0, run.stderr
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_SHUTOFF
    assert lab_domains(mig.lab, mig.name) == {mig.domain: libvirt.VIR_DOMAIN_RUNNING}


def test_preflight_refuses_without_changing_either_host(mig: MigSet) -> None:
    """Disk not on the destination, bridge missing there: one sentence each,
    exit 3, the guest still running here and nothing on the lab."""
    mig.spec.write_text(spec_text(mig.name, networks="[bus]"))
    mig.apply()
    run = mig.migrate()
    assert run.returncode == 3, run.stderr
    assert "pass --copy-storage" in run.stderr
    assert "does not exist on the destination" in run.stderr
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(mig.lab, mig.name) == {}


@pytest.mark.dedicated_cpus
def test_preflight_refuses_a_cpu_dedicated_there(tmp_path: Path, kvmctl_lab: LabState) -> None:
    """A safety VM moved to the lab holds the lab's only dedicable CPU: a
    second one cannot arrive there, though the same CPU is free on the source."""
    (tmp_path / "there").mkdir()
    (tmp_path / "here").mkdir()
    there = MigSet(tmp_path / "there", kvmctl_lab, placement="dedicated", criticality="safety")
    here = MigSet(tmp_path / "here", kvmctl_lab, placement="dedicated", criticality="safety")
    try:
        there.apply()
        run = there.migrate("--copy-storage")
        assert run.returncode == 0, run.stderr
        here.apply()
        run = here.migrate("--copy-storage")
        assert run.returncode == 3, run.stderr
        assert "dedicated" in run.stderr
        assert source_state(here.domain) == libvirt.VIR_DOMAIN_RUNNING
        assert lab_domains(kvmctl_lab, here.name) == {}
    finally:
        here.cleanup()
        there.cleanup()


# Exclusive: while it holds the host's free hugepages, a hugepage-backed VM that
# another test applies (here or on a lab) would be refused.
@pytest.mark.exclusive
def test_preflight_refuses_when_the_destination_lacks_hugepages(mig: MigSet) -> None:
    mig.apply()
    # Hold all but 10 free 2 MiB pages (the lab shares this machine's pool).
    with HugepageHog(keep_free=10):
        run = mig.migrate("--copy-storage")
    assert run.returncode == 3, run.stderr
    assert "hugepages" in run.stderr
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(mig.lab, mig.name) == {}


class HugepageHog:
    """A child process that maps (and so takes) free hugepages until it ends."""

    def __init__(self, keep_free: int):
        self.keep_free = keep_free
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> HugepageHog:
        free = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())
        take = max(free - self.keep_free, 0)
        code = (
            "import mmap, sys\n"
            f"m = mmap.mmap(-1, {take} * 2097152, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS"
            " | 0x40000)\n"  # MAP_HUGETLB
            f"for i in range({take}): m[i * 2097152] = 1\n"
            "print('held', flush=True)\n"
            "sys.stdin.read()\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "held"
        return self

    def __exit__(self, *_exc: object) -> None:
        assert self.proc is not None
        self.proc.kill()  # by PID: the child we started
        self.proc.wait()


def test_abort_mid_migration_leaves_the_guest_running_here(mig: MigSet) -> None:
    mig.apply()
    proc = start_slow_migration(mig, dirty_seconds=120, settle=2)
    try:
        run = kvmctl("migrate", "--abort", str(mig.spec), "a")
        assert run.returncode == 0, run.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    assert json.loads(out)["vms"][0]["status"] == "aborted"
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(mig.lab, mig.name) == {}
    assert lab_volumes(mig.lab, mig.name) == []
    assert guest_run(mig.domain, "/bin/echo", "here").strip() == "here"


def wait_for_job(domain: str, timeout: float = 60) -> None:
    conn = libvirt.open(URI)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = conn.lookupByName(domain).jobInfo()
            if info[0] != libvirt.VIR_DOMAIN_JOB_NONE and info[3] > 0:  # data total known
                time.sleep(1)
                return
            time.sleep(0.2)
        raise AssertionError(f"no migration job started for {domain}")
    finally:
        conn.close()


def test_destination_libvirtd_killed_mid_migration(
    tmp_path: Path, kvmctl_lab_factory: Callable[[], LabState]
) -> None:
    lab = kvmctl_lab_factory()
    s = MigSet(tmp_path, lab)
    try:
        s.apply()
        proc = start_slow_migration(s, dirty_seconds=120)
        labops.kill_libvirtd(lab)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert json.loads(out)["vms"][0]["status"] == "failed"
        assert source_state(s.domain) == libvirt.VIR_DOMAIN_RUNNING
        assert guest_run(s.domain, "/bin/echo", "here").strip() == "here"
        # Started again, the lab's libvirtd finds the failed incoming job and
        # removes its half-arrived guest: nothing is left there.
        labops.start_libvirtd(lab)
        wait_until(lambda: lab_domains(lab, s.name) == {}, 30, "the lab to drop the guest")
    finally:
        s.cleanup()


def test_network_loss_mid_migration_fails_within_keepalive(
    tmp_path: Path, kvmctl_lab_factory: Callable[[], LabState]
) -> None:
    """The lab's end of the veth goes down while the disk is being copied: the
    job fails within the keepalive bound (plus kvmctl's yank of the stuck
    sockets) and the guest keeps running here, unpaused."""
    lab = kvmctl_lab_factory()
    s = MigSet(tmp_path, lab)
    try:
        s.apply()
        proc = start_slow_migration(s, dirty_seconds=180)
        labops.set_link(lab, up=False)
        cut = time.monotonic()
        out, err = proc.communicate(timeout=180)
        took = time.monotonic() - cut
        labops.set_link(lab, up=True)
        assert proc.returncode == 1, err
        result = json.loads(out)["vms"][0]
        assert result["status"] == "failed"
        assert "keepalive" in result["error"]
        # kvmctl's connection to the destination: keepalive 5 s x 3, then a
        # 5 s grace for the abort before the sockets are yanked.
        assert took < 60, f"the failure took {took:.0f} s"
        assert source_state(s.domain) == libvirt.VIR_DOMAIN_RUNNING
        assert guest_run(s.domain, "/bin/echo", "here").strip() == "here"
    finally:
        labops.set_link(lab, up=True)
        s.cleanup()


def start_slow_migration(s: MigSet, dirty_seconds: int, settle: float = 0) -> subprocess.Popen[str]:
    """The guest dirtying 64 MB/s, its migration capped at 4 MB/s without
    auto-converge, and the job running: time enough to break it mid-way."""
    tool(s.domain, "dirty", "64", str(dirty_seconds), wait=False)
    time.sleep(settle)
    proc = start_migrate(s, "--bandwidth", "4MB/s", "--no-auto-converge")
    try:
        wait_for_job(s.domain)
    except BaseException:
        proc.kill()  # by PID: the child we started
        proc.wait()
        raise
    return proc


def start_migrate(s: MigSet, *args: str) -> subprocess.Popen[str]:
    return kvmctl_popen(
        "migrate",
        str(s.spec),
        "a",
        "--to",
        s.lab.uri,
        "--insecure",
        "--copy-storage",
        "--json",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory, kvmctl_lab: LabState) -> Iterator[MigSet]:
    s = MigSet(tmp_path_factory.mktemp("idle"), kvmctl_lab)
    try:
        s.apply()
        yield s
    finally:
        s.cleanup()


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["nosuchvm", "--to", "{lab}", "--insecure"], 2, "has no VM"),
        (["a", "--to", "not a uri", "--insecure"], 2, "not a destination"),
        (["a", "--to", "{lab}"], 2, "plain TCP"),
        (["a", "--to", URI, "--insecure"], 2, "source itself"),
        (["a", "--to", "qemu+tcp://10.251.255.254/system", "--insecure"], 3, "cannot reach"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    idle: MigSet, args: list[str], status: int, words: str
) -> None:
    argv = [a.replace("{lab}", idle.lab.uri) for a in args]
    run = kvmctl("migrate", str(idle.spec), *argv, timeout=120)
    assert run.returncode == status, run.stderr
    assert words in run.stderr
    assert source_state(idle.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(idle.lab, idle.name) == {}


def test_dirtying_guest_converges_under_the_policy_where_plain_defaults_do_not(
    mig: MigSet,
) -> None:
    """Same guest, same 16 MiB/s cap: libvirt's defaults keep iterating for
    30 s; kvmctl's policy (auto-converge) completes within its downtime limit."""
    mig.apply()
    tool(mig.domain, "dirty", "64", "600", wait=False)
    time.sleep(3)
    plain = plain_move(mig.domain, mig.lab, 16, 30)
    assert plain["converged"] is False and "error" not in plain, plain
    assert plain["iterations"] >= 5
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    # libvirt leaves the disk it precreated for the aborted job behind (kvmctl
    # removes it on recovery, see the abort test): clear it for kvmctl's turn.
    conn = libvirt.open(mig.lab.uri)
    try:
        _delete_volumes(conn, mig.name)
    finally:
        conn.close()

    run = mig.migrate("--copy-storage", "--bandwidth", "16MB/s", "--json", timeout=400)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["vms"][0]
    assert result["status"] == "completed"
    assert result["iterations"] >= 5 and result["downtime_ms"] <= 300
    assert lab_domains(mig.lab, mig.name) == {mig.domain: libvirt.VIR_DOMAIN_RUNNING}


WHOLE_SET = """\
name: {name}
host: {{housekeeping_cpus: [{housekeeping}]}}
vms:
  base:
    criticality: high
    memory: {{size: 128MiB}}
    image: {{builtin: test-guest}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
  app:
    depends_on: [base]
    memory: {{size: 128MiB}}
    image: {{builtin: test-guest}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
"""


def test_whole_set_moves_dependants_first_and_all_arrive(
    tmp_path: Path, kvmctl_lab: LabState
) -> None:
    s = MigSet(tmp_path, kvmctl_lab)
    s.spec.write_text(WHOLE_SET.format(name=s.name, housekeeping=worker_housekeeping_cpu()))
    try:
        s.apply()
        run = kvmctl(
            "migrate",
            "--all",
            str(s.spec),
            "--to",
            kvmctl_lab.uri,
            "--insecure",
            "--copy-storage",
            "--json",
        )
        assert run.returncode == 0, run.stderr
        moved = json.loads(run.stdout)["vms"]
        assert [r["vm"] for r in moved] == ["app", "base"]
        assert all(r["status"] == "completed" for r in moved)
        assert lab_domains(kvmctl_lab, s.name) == {
            f"{s.name}-app": libvirt.VIR_DOMAIN_RUNNING,
            f"{s.name}-base": libvirt.VIR_DOMAIN_RUNNING,
        }
        assert source_state(f"{s.name}-app") is None and source_state(f"{s.name}-base") is None
    finally:
        s.cleanup()


def test_postcopy_takes_over_when_precopy_stops_converging(mig: MigSet) -> None:
    """A guest dirtying 64 MB/s behind a 16 MiB/s cap never converges in
    pre-copy: kvmctl's own switch (`postcopy_due`) moves it to post-copy and
    the guest arrives, its memory and disk intact, and keeps running.

    Post-copy needs userfaultfd in the destination's QEMU: without it the job
    fails at once with the remedy named, and the guest stays here."""
    mig.spec.write_text(spec_text(mig.name, migration="{postcopy: true}"))
    mig.apply()
    guest_run(mig.domain, "/bin/sh", "-c", "echo through-postcopy > /data/marker; sync")
    tool(mig.domain, "counter", "start")
    tool(mig.domain, "dirty", "64", "600", wait=False)
    time.sleep(2)
    args = ("--copy-storage", "--bandwidth", "16MB/s", "--no-auto-converge", "--json")

    with unprivileged_userfaultfd(False):
        run = mig.migrate(*args)
    assert run.returncode == 1, run.stderr
    assert "vm.unprivileged_userfaultfd" in json.loads(run.stdout)["vms"][0]["error"]
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(mig.lab, mig.name) == {}

    before = counter(mig.domain)
    with unprivileged_userfaultfd(True):
        run = mig.migrate(*args, timeout=400)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)["vms"][0]
    assert result["status"] == "completed", result
    # Seen by kvmctl on the source: paused for post-copy while the job ran.
    assert result["postcopy"] is True, result
    assert result["iterations"] >= 4, result  # postcopy_due's passes, not a timeout
    assert lab_domains(mig.lab, mig.name) == {mig.domain: libvirt.VIR_DOMAIN_RUNNING}
    assert source_state(mig.domain) is None

    uri = mig.lab.uri
    assert guest_run(mig.domain, "/bin/cat", "/data/marker", uri=uri).strip() == "through-postcopy"
    after = counter(mig.domain, uri=uri)
    assert after > before
    wait_until(lambda: counter(mig.domain, uri=uri) > after, 10, "the counter to go on")


@contextmanager
def unprivileged_userfaultfd(allowed: bool) -> Iterator[None]:
    """The kernel setting post-copy needs on the destination (here: this
    machine's kernel, which the lab shares), set for the block and restored."""
    knob = Path("/proc/sys/vm/unprivileged_userfaultfd")
    old = knob.read_text().strip()
    knob.write_text("1" if allowed else "0")
    try:
        yield
    finally:
        knob.write_text(old)


def test_safety_vm_refuses_postcopy(mig: MigSet) -> None:
    mig.spec.write_text(spec_text(mig.name, criticality="safety"))
    mig.apply()
    run = mig.migrate("--copy-storage", "--on-timeout", "postcopy", "--timeout", "5s")
    assert run.returncode == 2, run.stderr
    assert "post-copy is refused for a safety VM" in run.stderr
    assert source_state(mig.domain) == libvirt.VIR_DOMAIN_RUNNING
    assert lab_domains(mig.lab, mig.name) == {}


def source_volumes(prefix: str) -> list[str]:
    conn = libvirt.open(URI)
    try:
        pool = conn.storagePoolLookupByName("kvmctl")
        refresh_pool(pool)
        return sorted(v.name() for v in pool.listAllVolumes(0) if v.name().startswith(prefix))
    finally:
        conn.close()


def test_move_on_shared_storage_keeps_the_disk_in_place(
    tmp_path: Path, kvmctl_lab_factory: Callable[..., LabState]
) -> None:
    """A lab that sees this host's volume directory (as over NFS): kvmctl
    finds the storage shared, moves the guest without copying its disk,
    refuses --copy-storage (a disk copied onto itself) and --keep-source (a
    second domain on the live disk), and deletes nothing after the move: the
    destination runs on that very file."""
    lab = kvmctl_lab_factory(shared_storage=True)
    s = MigSet(tmp_path, lab)
    try:
        s.apply()
        guest_run(s.domain, "/bin/sh", "-c", "echo on-shared-disk > /data/marker; sync")
        tool(s.domain, "counter", "start")
        volumes = source_volumes(s.name)
        assert volumes, "the set has no volume here"

        run = s.migrate("--copy-storage")
        assert run.returncode == 3, run.stderr
        assert "migrate without --copy-storage" in run.stderr
        run = s.migrate("--keep-source")
        assert run.returncode == 3, run.stderr
        assert "--keep-source would leave a second domain on it" in run.stderr
        assert source_state(s.domain) == libvirt.VIR_DOMAIN_RUNNING
        assert lab_domains(lab, s.name) == {}

        before = counter(s.domain)
        run = s.migrate("--json")
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)["vms"][0]
        assert result["status"] == "completed", result
        assert source_state(s.domain) is None
        assert lab_domains(lab, s.name) == {s.domain: libvirt.VIR_DOMAIN_RUNNING}
        # Nothing deleted, nothing copied: the same files, seen from both hosts.
        assert source_volumes(s.name) == volumes
        assert lab_volumes(lab, s.name) == volumes
        assert not any(v.startswith(".kvmctl-shared-") for v in source_volumes(""))
        uri = lab.uri
        assert guest_run(s.domain, "/bin/cat", "/data/marker", uri=uri).strip() == "on-shared-disk"
        guest_run(s.domain, "/bin/sh", "-c", "echo written-there > /data/after; sync", uri=uri)
        assert guest_run(s.domain, "/bin/cat", "/data/after", uri=uri).strip() == "written-there"
        after = counter(s.domain, uri=uri)
        assert after > before
    finally:
        s.cleanup()
