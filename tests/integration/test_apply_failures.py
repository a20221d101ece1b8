"""What `kvmctl apply` does when things go wrong, on real libvirtd + QEMU:
a VM that never becomes ready, preflight refusals, bad input, a killed run,
a libvirtd restart half-way, and a second apply of the same set.

Every set, domain, volume and bridge made here is named `kvt-afXXXX-...`, so
the host snapshots compare only what these tests can create, and a user's
own cockpits (or tests running alongside) are never touched.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.cockpit_helpers import (
    REPO,
    URI,
    kvmctl,
    kvmctl_json,
    kvmctl_popen,
    set_snapshot,
    sweep,
    worker_housekeeping_cpu,
)

# No test here runs a dedicated VM: the two CPU cases are refused in preflight.
# The killed-apply test's last apply must find nothing to do, which holds in the
# parallel part, where no set dedicates a CPU and so no CPU pool moves.
pytestmark = pytest.mark.integration

TOKEN = secrets.token_hex(2)
PREFIX = f"kvt-af{TOKEN}"  # 10 characters: a set name is PREFIX-<case of <= 4>
LIBVIRTD_PID = Path("/run/libvirtd.pid")

Spec = Callable[..., tuple[str, Path]]


def vm_yaml(
    name: str,
    *,
    probe: str | None = None,
    timeout: str = "60s",
    network: bool = True,
    cpu: str = "{placement: shared}",
    memory: str = "{size: 128MiB}",
    extra: str = "",
) -> str:
    return (
        f"  {name}:\n"
        f"    cpu: {cpu}\n"
        f"    memory: {memory}\n"
        "    image: {builtin: test-guest}\n"
        "    disk: {size: 64MiB}\n"
        + ("    networks: [net]\n" if network else "")
        + extra
        + f'    ready: {{probe: "{probe or f"serial:KVMCTL-READY {name}"}", timeout: {timeout}}}\n'
    )


@pytest.fixture
def spec(tmp_path: Path) -> Iterator[Spec]:
    """`spec(case, *vm_blocks)` writes a cockpit named PREFIX-case, whose one
    network's bridge is named like the set, and returns (set name, path).
    Afterwards `kvmctl destroy` removes it, and a sweep anything left over."""
    made: list[tuple[str, Path]] = []

    def make(case: str, *vms: str, network: bool = True) -> tuple[str, Path]:
        assert len(case) <= 4, "bridge names are at most 15 characters"
        name = f"{PREFIX}-{case}"
        text = f"name: {name}\nhost:\n  housekeeping_cpus: [{worker_housekeeping_cpu()}]\n"
        if network:
            text += f"networks:\n  net: {{bridge: {name}, subnet: 10.79.{len(made) + 1}.0/24}}\n"
        text += "vms:\n" + "".join(vms)
        path = tmp_path / f"{case}.yaml"
        path.write_text(text)
        made.append((name, path))
        return name, path

    yield make
    leftovers: list[str] = []
    for name, path in made:
        try:
            subprocess.run(
                [sys.executable, "-m", "kvmctl.cli", "destroy", str(path)],
                capture_output=True,
                timeout=120,
                cwd=REPO,
                env={**os.environ, "LIBVIRT_DEFAULT_URI": URI},
            )
        finally:
            leftovers += sweep(name)
    assert not leftovers, f"kvmctl destroy left these behind: {leftovers}"


@pytest.fixture(scope="module", autouse=True)
def final_sweep() -> Iterator[None]:
    yield
    ensure_libvirtd()
    sweep(PREFIX)


# --- helpers ----------------------------------------------------------------------


def popen_kvmctl(*args: str, log: Path) -> subprocess.Popen[bytes]:
    """The CLI in the background; stdout and stderr go to `log`."""
    with log.open("wb") as out:
        return kvmctl_popen(*args, stdout=out, stderr=subprocess.STDOUT)


def wait_until(
    what: str,
    check: Callable[[], object],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"kvmctl exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.02)


STATES = {libvirt.VIR_DOMAIN_SHUTOFF: "shut off", libvirt.VIR_DOMAIN_PAUSED: "paused"}


def set_domains(conn: libvirt.virConnect, set_name: str) -> dict[str, str]:
    """Domain name -> state (shut off, paused, running, ...), for the set's domains."""
    out = {}
    for dom in conn.listAllDomains():
        if dom.name().startswith(f"{set_name}-"):
            try:
                state = dom.state()[0]
            except libvirt.libvirtError:
                continue
            out[dom.name()] = (
                "running" if state == libvirt.VIR_DOMAIN_RUNNING else STATES.get(state, str(state))
            )
    return out


def all_ready(path: Path) -> bool:
    status = kvmctl_json("status", str(path))
    return all(r["state"] == "running" and r["ready"] for r in status["vms"])


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("kvmctl:")]


def daemon_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def libvirtd_answers() -> bool:
    run = subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30
    )
    return run.returncode == 0


def ensure_libvirtd() -> None:
    """Start libvirtd again if it is not running (a test stopped it and failed)."""
    try:
        pid = int(LIBVIRTD_PID.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pid = 0
    if not (pid and daemon_alive(pid)):
        subprocess.run(["libvirtd", "-d"], check=True, timeout=60)
    wait_until("answer from libvirtd", libvirtd_answers, 60)


def restart_libvirtd() -> float:
    """SIGTERM libvirtd by its pid file, start it again as soon as it is gone,
    and wait until it answers. Returns the seconds it was away."""
    pid = int(LIBVIRTD_PID.read_text().split()[0])
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    try:
        wait_until("exit of libvirtd", lambda: not daemon_alive(pid), 60)
    finally:
        ensure_libvirtd()
    return time.monotonic() - t0


# --- 1. a VM that never becomes ready -----------------------------------------------


def test_vm_never_ready_rolls_back_everything(spec: Spec) -> None:
    name, path = spec(
        "nr",
        vm_yaml("a"),
        vm_yaml("b", probe="serial:NEVER-PRINTED", timeout="4s", extra="    depends_on: [a]\n"),
    )
    before = set_snapshot(name)
    run = kvmctl("apply", str(path))
    assert run.returncode == 1, run.stderr
    # b started only once a was ready: the rollback had a ready VM to undo.
    assert re.search(r"\] a: ready after", run.stderr), run.stderr
    (line,) = error_lines(run.stderr)
    assert line == (
        f"kvmctl: apply of '{name}' failed and was rolled back: "
        f"domain '{name}-b' did not print 'NEVER-PRINTED' within 4 s"
    )
    assert set_snapshot(name) == before


# --- 2. preflight refusals ------------------------------------------------------------


def _hugepages_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("HugePages_Total:"):
            return int(line.split()[1])
    return 0


def _dedicated(name: str, vcpus: int = 1) -> str:
    return vm_yaml(name, cpu="{placement: dedicated}", extra=f"    vcpus: {vcpus}\n")


# case -> (its VMs, given one 2 MiB page more than the host has; the reason
# expected in the refusal, where {name} is the set and {pages} that page count)
PREFLIGHT: dict[str, tuple[Callable[[int], list[str]], str]] = {
    "huge": (
        lambda _: [vm_yaml("a", memory="{size: 64GiB, hugepages: 2MiB}")],
        r"a need 32768 x 2MiB hugepages but only \d+ are free",
    ),
    # More 2 MiB pages than the host has at all, so more than HugePages_Free.
    "hfre": (
        lambda pages: [vm_yaml("a", memory=f"{{size: {pages * 2}MiB, hugepages: 2MiB}}")],
        r"a need {pages} x 2MiB hugepages but only \d+ are free",
    ),
    "cpu4": (lambda _: [_dedicated("a", 4)], r"VM 'a' needs 4 dedicated CPU\(s\) but only \d+"),
    "cpu2": (
        lambda _: [_dedicated("a"), _dedicated("b")],
        r"VM '[ab]' needs 1 dedicated CPU\(s\) but only 0 are free",
    ),
    "mem": (
        lambda _: [vm_yaml("a", memory="{size: 4TiB}")],
        r"the VMs need \d+ MiB of ordinary memory but the host has \d+ MiB available",
    ),
    "img": (
        lambda _: [vm_yaml("a")],
        r"VM 'a': guest image 'test-guest' is missing: run `make images`",
    ),
    "brdg": (
        lambda _: [vm_yaml("a")],
        r"bridge '{name}' already exists and kvmctl did not create it",
    ),
    "dom": (
        lambda _: [vm_yaml("a")],
        r"a domain named '{name}-a' already exists and belongs to nobody kvmctl knows",
    ),
}

FOREIGN_DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>16</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
</domain>"""


@pytest.mark.parametrize("case", list(PREFLIGHT))
def test_preflight_refuses_and_creates_nothing(
    case: str, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vms, expected = PREFLIGHT[case]
    pages = _hugepages_total() + 1
    name, path = spec(case, *vms(pages))
    foreign: dict[str, str] = {}
    if case == "img":
        empty = tmp_path / "no-images"
        empty.mkdir()
        monkeypatch.setenv("KVMCTL_IMAGE_DIR", str(empty))
    elif case == "brdg":
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="bridge")
        foreign["bridge"] = Path(f"/sys/class/net/{name}/ifindex").read_text()
    elif case == "dom":
        conn = libvirt.open(URI)
        try:
            conn.defineXML(FOREIGN_DOMAIN.format(name=f"{name}-a"))
            foreign["domain"] = conn.lookupByName(f"{name}-a").XMLDesc(0)
        finally:
            conn.close()
    try:
        before = set_snapshot(name)
        run = kvmctl("apply", str(path))
        assert run.returncode == 3, run.stdout + run.stderr
        (line,) = error_lines(run.stderr)
        assert line == (
            f"kvmctl: this host cannot run cockpit '{name}' as planned; nothing was changed"
        )
        assert re.search(expected.format(name=re.escape(name), pages=pages), run.stderr), run.stderr
        assert set_snapshot(name) == before
        # What kvmctl did not create is left exactly as it was.
        if "bridge" in foreign:
            assert Path(f"/sys/class/net/{name}/ifindex").read_text() == foreign["bridge"]
            assert not Path(f"/sys/class/net/{name}/ifalias").read_text().strip()
        if "domain" in foreign:
            conn = libvirt.open(URI)
            try:
                dom = conn.lookupByName(f"{name}-a")
                assert dom.XMLDesc(0) == foreign["domain"] and not dom.isActive()
            finally:
                conn.close()
    finally:
        if "bridge" in foreign:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        if "domain" in foreign:
            conn = libvirt.open(URI)
            try:
                conn.lookupByName(f"{name}-a").undefine()
            finally:
                conn.close()


# --- 3. bad input ------------------------------------------------------------------------

BAD_INPUT = {
    "yaml": (
        [("memory: {size: 128MiB}", "memory: {size: 128MiB")],
        r"bad\.yaml:\d+: YAML syntax error",
    ),
    "unknown field": (
        [("    disk:", "    memroy: {size: 1GiB}\n    disk:")],
        r"bad\.yaml:\d+ vms\.a\.memroy: unknown field 'memroy' \(did you mean 'memory'\?\)",
    ),
    "negative vcpus": (
        [("    disk:", "    vcpus: -1\n    disk:")],
        r"bad\.yaml:\d+ vms\.a\.vcpus: must be greater than or equal to 1 \(got -1\)",
    ),
    "cycle": (
        [("  a:\n", "  a:\n    depends_on: [b]\n"), ("  b:\n", "  b:\n    depends_on: [a]\n")],
        r"bad\.yaml:\d+ vms\.a\.depends_on: dependency cycle: a -> b -> a",
    ),
    "unknown network": (
        [("networks: [net]", "networks: [nosuch]")],
        r"bad\.yaml:\d+ vms\.a\.networks\[0\]\.name: unknown network 'nosuch' \(known: net\)",
    ),
    "xml name": (
        [("  a:\n", '  "a<b":\n')],
        r"bad\.yaml:\d+ vms\.a<b: 'a<b' is not a valid name",
    ),
    "shell name": (
        [("  a:\n", '  "x;rm":\n')],
        r"bad\.yaml:\d+ vms\.x;rm: 'x;rm' is not a valid name",
    ),
    "image path": (
        [("image: {builtin: test-guest}", "image: {path: /etc/passwd}")],
        r"bad\.yaml:\d+ vms\.a\.image\.path: '/etc/passwd' is outside the allowed image "
        r"directories",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exit_2_nothing_created(case: str, spec: Spec, tmp_path: Path) -> None:
    edits, expected = BAD_INPUT[case]
    name, good = spec("bad", vm_yaml("a"), vm_yaml("b"))
    text = good.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new, 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    before = set_snapshot(name)
    run = kvmctl("apply", str(bad))
    assert run.returncode == 2, run.stdout + run.stderr
    assert re.search(expected, run.stderr), run.stderr
    assert error_lines(run.stderr) == ["kvmctl: 1 problem(s) in the spec; nothing was changed."]
    assert set_snapshot(name) == before


# --- 4. an apply killed half-way -----------------------------------------------------------


@pytest.mark.parametrize("kill_when", ["defined", "running"])
def test_killed_apply_converges_on_the_next_run(kill_when: str, spec: Spec, tmp_path: Path) -> None:
    name, path = spec(f"k{kill_when[0]}", vm_yaml("a"), vm_yaml("b"))
    before = set_snapshot(name)
    proc = popen_kvmctl("apply", str(path), log=tmp_path / "first.log")
    conn = libvirt.open(URI)
    try:
        if kill_when == "defined":
            seen = wait_until("domain of the set", lambda: set_domains(conn, name), 60, proc)
        else:
            # Resumed, so waiting for readiness: the next run finds it running.
            seen = wait_until(
                "running domain of the set",
                lambda: "running" in (d := set_domains(conn, name)).values() and d,
                60,
                proc,
            )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Whatever the kill left behind (a domain defined, paused or running, a
    # volume without its domain, the bridge) is the next run's to sort out.
    left = set_snapshot(name)
    second = kvmctl_json("apply", str(path))
    print(f"killed when {kill_when} ({seen}), leaving {left}; the next run did {second['vms']}")
    assert set(second["vms"]) == {"a", "b"}
    assert {v["action"] for v in second["vms"].values()} <= {"create", "start", "unchanged"}
    domains = [f"{name}-a", f"{name}-b"]
    snap = set_snapshot(name)
    assert snap["domains"] == domains
    assert snap["volumes"] == [f"kvmctl/{d}-data.qcow2" for d in domains]
    assert snap["links"] == sorted(before["links"] + [name])
    # A VM the kill left running (but not yet ready) is left alone, and gets there.
    wait_until("readiness of every VM", lambda: all_ready(path), 60)

    third = kvmctl("apply", str(path))
    assert third.returncode == 0 and "nothing to do" in third.stdout, third.stdout + third.stderr
    assert set_snapshot(name) == snap


# --- 5. libvirtd restarted half-way ---------------------------------------------------------


@pytest.mark.exclusive  # libvirtd goes away for every test running meanwhile
def test_libvirtd_restart_during_apply(spec: Spec, tmp_path: Path) -> None:
    name, path = spec("lvd", vm_yaml("a"), vm_yaml("b", extra="    depends_on: [a]\n"))
    before = set_snapshot(name)
    log = tmp_path / "first.log"
    proc = popen_kvmctl("apply", str(path), log=log)
    try:
        wait_until(
            "progress line saying a waits for readiness",
            lambda: "a: waiting for readiness" in log.read_text(),
            60,
            proc,
        )
        away = restart_libvirtd()
        rc = proc.wait(timeout=120)
    finally:
        ensure_libvirtd()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    print(f"libvirtd was away {away:.1f} s; the run exited {rc}:\n{out}")
    assert "Traceback" not in out, out
    assert rc in (0, 1), out
    if rc == 1:
        # Rolled back, and cleanly: every undo ran, nothing of the set is left.
        (line,) = error_lines(out)
        assert line.startswith(f"kvmctl: apply of '{name}' failed and was rolled back: "), out
        assert "could not undo" not in out, out
        assert set_snapshot(name) == before
    else:
        assert all_ready(path)

    second = kvmctl_json("apply", str(path))
    assert set(second["vms"]) == {"a", "b"}
    assert all_ready(path)
    domains = [f"{name}-a", f"{name}-b"]
    snap = set_snapshot(name)
    assert snap["domains"] == domains
    assert snap["volumes"] == [f"kvmctl/{d}-data.qcow2" for d in domains]
    assert snap["links"] == sorted(before["links"] + [name])


# --- 6. two applies of the same set at once ---------------------------------------------------


def test_second_apply_of_the_same_set_is_refused(spec: Spec, tmp_path: Path) -> None:
    name, path = spec("lock", vm_yaml("a"))
    proc = popen_kvmctl("apply", str(path), log=tmp_path / "first.log")
    conn = libvirt.open(URI)
    try:
        wait_until("domain of the set", lambda: set_domains(conn, name), 60, proc)
        snap = set_snapshot(name)
        t0 = time.monotonic()
        second = kvmctl("apply", str(path))
        refused_in = time.monotonic() - t0
        also = kvmctl("destroy", str(path))
        after = set_snapshot(name)
        rc = proc.wait(timeout=120)
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    message = (
        f"kvmctl: another kvmctl (pid {proc.pid}) is changing cockpit '{name}' right now: "
        "wait for it to finish"
    )
    assert second.returncode == 3 and error_lines(second.stderr) == [message], second.stderr
    assert refused_in < 10  # at once: no waiting for the lock, no host probe
    assert also.returncode == 3 and error_lines(also.stderr) == [message], also.stderr
    # The refused runs changed nothing (the first one is only booting its VM
    # by then), and the first one finishes undisturbed.
    assert snap["domains"] == [f"{name}-a"] and after == snap
    assert rc == 0, (tmp_path / "first.log").read_text()
    assert all_ready(path)
