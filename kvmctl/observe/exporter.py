"""`kvmctl exporter`: a cockpit's metrics over HTTP for Prometheus.

Nothing is cached between requests: each scrape re-plans against what runs,
reads the status rows exactly as `kvmctl status` does (kvmctl.observe.overview), the
audit's drift and libvirt's CPU statistics, all over the one libvirt
connection the exporter opened (`Virt` opens a new one when it dies), and
hands them to the pure kvmctl.observe.metrics. Scrapes run one at a time; a set that
cannot be read gives `kvmctl_up 0` instead of an HTTP error.
"""

from __future__ import annotations

import errno
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from kvmctl.adapters.stats import domain_stats
from kvmctl.errors import HostError, UsageError
from kvmctl.observe import metrics
from kvmctl.observe.audit import audit_session
from kvmctl.observe.overview import gather
from kvmctl.session import Session, open_session, replan
from kvmctl.state.supervisor import supervisor_state

_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})$")


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port), else a UsageError naming it."""
    m = _LISTEN.match(text.strip())
    port = int(m["port"]) if m else 0
    if m is None or not 0 < port < 65536:
        raise UsageError(
            f"--listen {text!r} is not HOST:PORT with a port from 1 to 65535 "
            "(e.g. 127.0.0.1:9477 or [::1]:9477)"
        )
    return m["v6"] or m["host"], port


class CockpitCollector(Collector):
    """Gathers the set on every `collect()` (one scrape at a time)."""

    def __init__(self, session: Session):
        self.session = session
        self._lock = threading.Lock()
        self._last_error = ""

    def scrape(self) -> metrics.Scrape:
        t0 = time.monotonic()
        session = self.session = replan(self.session)
        assert session.virt is not None
        supervisor = supervisor_state(session.spec.name) or {}
        rows = gather(session, supervisor)
        report = audit_session(session, {r.domain: r.state for r in rows})
        live = [r.domain for r in rows if r.state in ("running", "paused")]
        stats = domain_stats(session.virt.conn, live) if live else {}
        return metrics.Scrape(
            set_name=session.spec.name,
            rows=rows,
            stats=stats,
            drift=Counter(c.vm for c in report.drift),
            checks=Counter(c.vm for c in report.checks),
            supervisor_alive=bool(supervisor.get("alive")),
            seconds=time.monotonic() - t0,
            supervisor=supervisor,
        )

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            t0 = time.monotonic()
            try:
                fams = metrics.families(self.scrape())
            except Exception as err:  # noqa: BLE001 - report it as kvmctl_up 0, keep serving
                self._say(f"cannot read cockpit '{self.session.spec.name}': {err}")
                fams = metrics.failed(self.session.spec.name, time.monotonic() - t0)
            else:
                self._say("")
        yield from fams

    def _say(self, error: str) -> None:
        """One stderr line when reading starts failing, or works again."""
        if error != self._last_error:
            sys.stderr.write(f"kvmctl: {error or 'reading the cockpit works again'}\n")
            sys.stderr.flush()
        self._last_error = error


def export(
    file: Path, uri: str, host: str | None, listen: tuple[str, int], stop: threading.Event
) -> None:
    """Serve the metrics of the VMs the spec in `file` places on `host` (None:
    those without host:), read through `uri`, on `listen` until `stop` is set."""
    session = open_session(file, uri, host=host)
    try:
        if not stop.is_set():  # asked to stop while the session opened
            serve(CockpitCollector(session), *listen, stop)
    finally:
        session.close()


def serve(collector: Collector, host: str, port: int, stop: threading.Event) -> None:
    """Serve /metrics on host:port until `stop` is set. A port that cannot be
    had is a HostError (exit 3), an unknown host name a UsageError (exit 2);
    nothing is left listening either way."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    try:
        server, thread = start_http_server(port, host, registry)
    except OSError as err:
        raise _listen_error(host, port, err) from None
    sys.stderr.write(f"kvmctl: serving metrics on {_url(host, port)}\n")
    sys.stderr.flush()
    try:
        # A timeout, so signal handlers get to run between waits.
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        with suppress(RuntimeError):
            thread.join(5)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def _listen_error(host: str, port: int, err: OSError) -> Exception:
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if err.errno == errno.EADDRINUSE:
        return HostError(
            f"cannot listen on {where}: the port is in use; choose another with --listen"
        )
    if err.errno == errno.EADDRNOTAVAIL:
        return HostError(f"cannot listen on {where}: no interface of this host has that address")
    if err.errno == errno.EACCES:
        return HostError(f"cannot listen on {where}: ports below 1024 need root")
    if err.errno is None or err.errno < 0:  # socket.gaierror: the name does not resolve
        return UsageError(f"cannot listen on {where}: unknown host name {host!r}")
    return HostError(f"cannot listen on {where}: {err.strerror or err}")
