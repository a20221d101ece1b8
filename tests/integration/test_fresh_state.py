"""kvmctl on a machine where none of its own directories exist yet.

This host is never fresh: CI runs right after development on it, so a
directory once made by hand hides a missing `mkdir` (as `/var/log/kvmctl`
once did: every domain start failed on a new machine with "Unable to open
file ... No such file or directory"). Two ways of starting from nothing:

- the README's main job (doctor, apply of the example cockpit, status,
  screens, destroy) with the real default directories moved aside, as on a
  new machine after `make setup` minus the role's directories;
- one VM through snapshot create/revert, supervise restart, exporter scrape
  and migrate to a lab, with every state path under an empty
  KVMCTL_STATE_ROOT.

Each step must work; none may print a traceback or libvirt's "No such file".
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from kvmctl.host import threads
from kvmctl.testing.lab import LabState
from tests.integration.cockpit_helpers import (
    REPO,
    URI,
    kvmctl,
    renamed_example,
    sweep,
    write_spec,
)
from tests.integration.ops_helpers import (
    SupervisorProcess,
    fetch,
    free_port,
    kill_qemu,
    start_exporter,
)

pytestmark = [pytest.mark.integration, pytest.mark.dedicated_cpus]

# kvmctl's state directories at their defaults; images are build artifacts
# (`make images`) and stay.
REAL_DIRS = (
    Path("/run/kvmctl"),
    Path("/var/log/kvmctl"),
    Path("/var/lib/kvmctl/specs"),
    Path("/var/lib/kvmctl/history"),
    Path("/var/lib/kvmctl/snapshots"),
    Path("/var/lib/kvmctl/warm"),
    Path("/var/lib/kvmctl/volumes"),
)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any kvmctl path override (the
    suite's fixtures set some), plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("KVMCTL_") and (k.endswith("_DIR") or k == "KVMCTL_STATE_ROOT"))
        or k == "KVMCTL_IMAGE_DIR"
    }
    return {**env, "LIBVIRT_DEFAULT_URI": URI, **extra}


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = kvmctl(*args, timeout=timeout, env=env)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert "No such file or directory" not in output, output
    assert result.returncode == 0, f"kvmctl {' '.join(args)}: exit {result.returncode}\n{output}"
    return result


@pytest.fixture
def real_dirs_moved_aside() -> Iterator[None]:
    """The default directories renamed away for the test. Afterwards whatever
    they held goes back, merged with what appeared meanwhile (nothing is lost,
    not even another run's files)."""
    aside = {d: d.with_name(f"{d.name}.aside-{secrets.token_hex(3)}") for d in REAL_DIRS}
    for d, a in aside.items():
        if d.exists():
            d.rename(a)
    try:
        yield
    finally:
        for d, a in aside.items():
            if not a.exists():
                continue
            if not d.exists():
                a.rename(d)
                continue
            for entry in a.iterdir():
                target = d / entry.name
                if target.exists():
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink()
                entry.rename(target)
            a.rmdir()


TOKEN = secrets.token_hex(2)
SET = f"kvt-fresh-{TOKEN}"
MAIN_JOB_SPEC = renamed_example(SET, (f"kvt{TOKEN}veh", f"kvt{TOKEN}med"))


def assert_made_for_qemu(directory: Path) -> None:
    assert directory.is_dir(), f"{directory} was not made"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory


# The pool's directory is moved aside too: no other test may be using it.
@pytest.mark.exclusive
def test_readme_main_job_from_empty_state(real_dirs_moved_aside: None, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, MAIN_JOB_SPEC)
    env = clean_env()
    try:
        run(env, "doctor")
        run(env, "apply", str(spec))
        status = run(env, "status", str(spec), "--json")
        assert status.stdout.count('"state": "running"') == 4, status.stdout
        png = tmp_path / "cockpit.png"
        run(env, "screens", str(spec), "-o", str(png))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        run(env, "destroy", str(spec))
        assert sweep(SET) == []
    for d in (Path("/var/log/kvmctl"), Path("/run/kvmctl/locks")):
        assert_made_for_qemu(d)
    assert Path("/var/lib/kvmctl/volumes").is_dir()  # libvirt's pool build makes it, 0711
    assert list(Path("/var/log/kvmctl").glob(f"{SET}-*.serial.log"))


ONE_VM = """\
name: {name}
host:
  housekeeping_cpus: [0]
vms:
  solo:
    role: infotainment
    cpu: {{shares: 512}}
    memory: {{size: 128MiB}}
    image: {{builtin: test-guest}}
    disk: {{size: 32MiB}}
    ready: {{probe: agent, timeout: 90s}}
    restart: {{policy: always, max: 3, window: 60s}}
"""


@pytest.fixture
def fresh_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("state-root")
    root.chmod(0o755)  # a chosen root must let QEMU through, as / does
    return root


def test_one_vm_operations_from_empty_state_root(
    fresh_root: Path, tmp_path: Path, kvmctl_lab: LabState
) -> None:
    name = f"kvt-fr1-{secrets.token_hex(2)}"
    domain = f"{name}-solo"
    spec = write_spec(tmp_path, ONE_VM.format(name=name))
    env = clean_env(KVMCTL_STATE_ROOT=str(fresh_root))
    try:
        run(env, "apply", str(spec))
        assert (fresh_root / f"var/log/kvmctl/{domain}.serial.log").exists()

        run(env, "snapshot", "create", str(spec), "solo", "s1")
        assert (fresh_root / f"var/lib/kvmctl/history/{name}.json").exists()
        run(env, "snapshot", "revert", str(spec), "solo", "s1")
        run(env, "snapshot", "delete", str(spec), "solo", "s1")  # libvirt moves none with one

        port = free_port()
        exporter = start_exporter(spec, f"127.0.0.1:{port}", env=env)
        try:
            metrics = fetch(f"http://127.0.0.1:{port}/metrics", exporter)
            assert any(sample.startswith("kvmctl_") for sample in metrics)
        finally:
            exporter.terminate()
            exporter.wait(10)

        restart_under_supervisor(env, spec, domain, tmp_path)
        assert list((fresh_root / "run/kvmctl/supervise").glob("*.json"))

        run(
            env,
            "migrate",
            "solo",
            "--to",
            kvmctl_lab.uri,
            "--copy-storage",
            "--insecure",
            "-c",
            URI,
        )
        assert domain_state(kvmctl_lab.uri, domain) == libvirt.VIR_DOMAIN_RUNNING
    finally:
        sweep(name, kvmctl_lab.uri)
        subprocess.run(
            [sys.executable, "-m", "kvmctl.cli", "destroy", str(spec)],
            env=env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
        assert sweep(name) == []
    assert_made_for_qemu(fresh_root / "run/kvmctl/locks")


def restart_under_supervisor(env: dict[str, str], spec: Path, domain: str, logs: Path) -> None:
    sup = SupervisorProcess(spec, logs, env=env)
    try:
        sup.wait(60, event="observed", vm="solo")
        before = kill_qemu(domain)
        sup.wait(120, event="restarted", vm="solo")
        pid = threads.qemu_pid(domain)
        assert pid is not None and pid != before
    finally:
        sup.terminate()


def domain_state(uri: str, domain: str) -> int:
    conn = libvirt.open(uri)
    try:
        return int(conn.lookupByName(domain).state()[0])
    finally:
        conn.close()
