"""How `kvmctl` fails when libvirt cannot be reached, run as a subprocess.

The running libvirtd is shared with everything else on the host, so it is not
stopped here. A daemon that is not running looks the same to a client as a
socket nobody serves: these tests point the URI at such sockets (a missing
path, and a stale socket file left by a dead daemon), which is the real code
path of "libvirtd is down".
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.cockpit_helpers import EXAMPLE, cli_env
from tests.integration.cockpit_helpers import URI as REAL_URI
from tests.integration.cockpit_helpers import kvmctl as run_kvmctl

pytestmark = [pytest.mark.integration, pytest.mark.no_set]

MISSING = "qemu+unix:///system?socket=/nonexistent/libvirt-sock"


def kvmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with no LIBVIRT_DEFAULT_URI unless `env` sets one."""
    result = run_kvmctl(*args, timeout=180, env=cli_env(None, **(env or {})))
    assert "Traceback" not in result.stdout
    return result


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kvmctl: ")
    return lines[0]


@pytest.fixture
def stale_socket(tmp_path: Path) -> Iterator[str]:
    """A socket file whose server is gone: what a crashed libvirtd leaves behind."""
    path = tmp_path / "libvirt-sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()
    yield f"qemu+unix:///system?socket={path}"


def test_daemon_not_running_is_one_sentence_and_exit_3() -> None:
    result = kvmctl("facts", "-c", MISSING)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert f"cannot reach libvirt at {MISSING}" in line
    assert "is libvirtd running on this host?" in line
    assert "libvirtd -d" in line
    assert result.stdout == ""


def test_stale_socket_is_one_sentence_and_exit_3(stale_socket: str) -> None:
    result = kvmctl("facts", "-c", stale_socket)
    assert result.returncode == 3
    line = one_line(result.stderr)
    assert "Connection refused" in line and "is libvirtd running" in line


def test_doctor_with_the_daemon_down_shows_the_table_and_exits_3() -> None:
    result = kvmctl("doctor", "-c", MISSING)
    assert result.returncode == 3
    assert result.stderr.startswith("kvmctl: this host cannot run a cockpit yet:")
    assert "  - libvirt: cannot reach libvirt at" in result.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()[2:]}
    assert rows["libvirt"][1] == "fail"
    assert rows["kvm"][1] == "fail"


def test_doctor_json_with_the_daemon_down() -> None:
    import json

    result = kvmctl("doctor", "--json", "-c", MISSING)
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert data["ok"] is False
    assert data["facts"]["libvirt"]["reachable"] is False


def test_libvirt_default_uri_is_honoured() -> None:
    result = kvmctl("facts", env={"LIBVIRT_DEFAULT_URI": MISSING})
    assert result.returncode == 3
    assert MISSING in one_line(result.stderr)


def test_connect_flag_wins_over_the_environment(tmp_path: Path) -> None:
    env = {
        "LIBVIRT_DEFAULT_URI": MISSING,
        "KVMCTL_KVM_DEVICE": "/nonexistent",
        "KVMCTL_RUN_DIR": str(tmp_path),
    }
    result = kvmctl("facts", "-c", REAL_URI, env=env)
    assert result.returncode == 0, result.stderr
    assert '"reachable": true' in result.stdout


def test_real_daemon_through_the_environment(tmp_path: Path) -> None:
    env = {
        "LIBVIRT_DEFAULT_URI": REAL_URI,
        "KVMCTL_KVM_DEVICE": "/nonexistent",
        "KVMCTL_RUN_DIR": str(tmp_path),
    }
    result = kvmctl("facts", env=env)
    assert result.returncode == 0, result.stderr
    assert f'"uri": "{REAL_URI}"' in result.stdout


@pytest.mark.parametrize("uri", ["qemu:///sys tem", "bogus://", "qemu:///embed"])
@pytest.mark.parametrize("verb", ["doctor", "facts"])
def test_malformed_uri_is_exit_2(verb: str, uri: str) -> None:
    result = kvmctl(verb, "-c", uri)
    assert result.returncode == 2
    assert f"'{uri}' is not a valid libvirt URI" in one_line(result.stderr)


@pytest.mark.parametrize("verb", ["plan", "status"])
def test_cockpit_verbs_with_the_daemon_down_exit_3(verb: str) -> None:
    result = kvmctl(verb, str(EXAMPLE), "-c", MISSING)
    assert result.returncode == 3, result.stderr
    assert f"cannot reach libvirt at {MISSING}" in one_line(result.stderr)


@pytest.mark.parametrize("uri", ["bogus://", "qemu:///sys tem"])
@pytest.mark.parametrize("verb", ["plan", "status"])
def test_cockpit_verbs_with_a_malformed_uri_exit_2(verb: str, uri: str) -> None:
    result = kvmctl(verb, str(EXAMPLE), "-c", uri)
    assert result.stderr.startswith("kvmctl: ")
    assert result.returncode == 2, result.stderr
    assert f"'{uri}' is not a valid libvirt URI" in one_line(result.stderr)
