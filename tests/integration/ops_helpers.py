"""Helpers for the operate-verb tests (supervise, audit, top, screens,
exporter): run a command in a guest through its agent, run `kvmctl supervise`
as a child process and read its JSON lines, run `kvmctl exporter` and scrape
it, and apply a set for a test and remove it after."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import libvirt
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.cockpit_helpers import (
    URI,
    cli_env,
    kvmctl,
    kvmctl_popen,
    sweep,
    write_spec,
)
from tests.integration.guest_agent import ExecResult, exec_start, exec_status

T = TypeVar("T")


def on_domain(domain: str, uri: str, call: Callable[[libvirt.virDomain], T]) -> T:
    """`call(domain)` on a connection of its own, so a libvirtd restart between
    two calls does not matter."""
    conn = libvirt.open(uri)
    try:
        return call(conn.lookupByName(domain))
    finally:
        conn.close()


def guest_start(domain: str, path: str, *args: str, uri: str = URI) -> int:
    """Start a program in the guest; its guest pid."""
    return on_domain(domain, uri, lambda dom: exec_start(dom, path, args))


def guest_status(domain: str, pid: int, uri: str = URI) -> ExecResult | None:
    """What guest program `pid` did, or None while it runs."""
    return on_domain(domain, uri, lambda dom: exec_status(dom, pid))


def guest_run(
    domain: str, path: str, *args: str, timeout: float = 30, wait: bool = True, uri: str = URI
) -> str:
    """Run a program in the guest; its stdout (or "" when not waiting)."""
    pid = guest_start(domain, path, *args, uri=uri)
    if not wait:
        return ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = guest_status(domain, pid, uri)
        if result is not None:
            return result.stdout
        time.sleep(0.1)
    raise AssertionError(f"{domain}: {path} {args} did not finish within {timeout} s")


def tool(
    domain: str, *args: str, wait: bool = True, timeout: float = 30, uri: str = URI
) -> dict[str, str]:
    """kvmctl-tool in the guest; its key=value words."""
    out = guest_run(domain, "/usr/bin/kvmctl-tool", *args, wait=wait, timeout=timeout, uri=uri)
    return dict(w.split("=", 1) for w in out.split() if "=" in w)


def guest_uptime(domain: str) -> float:
    return float(guest_run(domain, "/bin/cat", "/proc/uptime").split()[0])


def counter(domain: str, uri: str = URI) -> int:
    return int(tool(domain, "counter", "read", uri=uri)["memory"])


def qemu_pid(domain: str) -> int | None:
    try:
        return int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def kill_qemu(domain: str) -> int:
    pid = qemu_pid(domain)
    assert pid is not None, f"no QEMU pid file for {domain}"
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_until(check: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


def domain_state(domain: str) -> str:
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(domain)
        return {1: "running", 3: "paused", 5: "shut off"}.get(dom.state()[0], "other")
    except libvirt.libvirtError:
        return "absent"
    finally:
        conn.close()


class SupervisorProcess:
    """`kvmctl supervise SPEC` as a child process; its JSON lines in `events`."""

    def __init__(self, spec: Path, state_dir: Path, *extra: str, env: dict[str, str] | None = None):
        """`state_dir` takes the supervisor's state (KVMCTL_SUPERVISE_DIR) and
        its output; with `env`, the supervisor runs with that environment and
        keeps its state where it says."""
        self.state_dir = state_dir
        self.stderr_path = state_dir / "supervise.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = kvmctl_popen(
            "supervise",
            str(spec),
            *extra,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env if env is not None else cli_env(KVMCTL_SUPERVISE_DIR=str(state_dir)),
        )
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with (self.state_dir / "supervise.log").open("a") as copy:
            for line in self.proc.stdout:
                copy.write(line)
                copy.flush()
                self._add(line)

    def _add(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            event = {"event": "unparsed", "line": line}
        with self._lock:
            self.events.append(event)

    def mark(self) -> int:
        with self._lock:
            return len(self.events)

    def since(self, mark: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events[mark:])

    def wait(self, timeout: float, since: int = 0, **match: Any) -> dict[str, Any]:
        """The first event after `since` whose fields equal `match`."""

        def found() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"supervisor exited {self.proc.returncode}: {self.stderr_path.read_text()}"
                )
            for e in self.since(since):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            return None

        try:
            return wait_until(found, timeout, f"supervisor event {match}")  # type: ignore[no-any-return]
        except AssertionError:
            tail = "\n".join(json.dumps(e) for e in self.since(since)[-25:])
            raise AssertionError(
                f"no supervisor event {match} within {timeout} s; last:\n{tail}"
            ) from None

    def count(self, since: int = 0, **match: Any) -> int:
        return sum(1 for e in self.since(since) if all(e.get(k) == v for k, v in match.items()))

    def terminate(self, timeout: float = 20) -> int:
        """SIGTERM by pid; SIGKILL (by pid) if it does not exit in time."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)
        self._stderr.close()
        return self.proc.returncode


def libvirtd_pid() -> int | None:
    try:
        pid = int(Path("/run/libvirtd.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def ensure_libvirtd() -> None:
    """Start libvirtd again if it is not running (after a test stopped it)."""
    if libvirtd_pid() is None:
        subprocess.run(["libvirtd", "-d"], check=True, timeout=30)
        wait_until(_libvirt_answers, 30, "libvirtd to answer")


def _libvirt_answers() -> bool:
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError:
        return False
    return True


@contextmanager
def applied_set(
    directory: Path, set_name: str, spec_text: str, timeout: float = 300
) -> Iterator[Path]:
    """The spec written to `directory` and applied (within `timeout` s);
    destroyed afterwards, and nothing of the set may be left for the sweep."""
    path = write_spec(directory, spec_text)
    try:
        result = kvmctl("apply", str(path), timeout=timeout)
        assert result.returncode == 0, result.stderr
        yield path
    finally:
        kvmctl("destroy", str(path), timeout=120)
        assert sweep(set_name) == []


# --------------------------------------------------------------------------- exporter

START_TIMEOUT = 120.0  # opening the session may boot the KVM probe guest first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_exporter(
    spec: Path, listen: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    return kvmctl_popen(
        "exporter",
        str(spec),
        "--listen",
        listen,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def fetch(url: str, proc: subprocess.Popen[str]) -> dict[str, Any]:
    """/metrics parsed: {sample name: {frozenset(labels): value}}, waiting for
    the exporter to listen."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url, timeout=30) as reply:
                text = reply.read().decode()
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "exporter did not start listening"
            time.sleep(0.1)
    out: dict[str, Any] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out
