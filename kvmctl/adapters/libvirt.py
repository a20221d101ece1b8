"""libvirt-python behind a thin mapping layer.

Connections, versions, capabilities and the boot of a throw-away transient
domain. libvirt errors come out as kvmctl errors: a URI libvirt cannot parse
or has no driver for is bad input (exit 2), a daemon that cannot be reached
is a host problem (exit 3).

libvirt prints every error to stderr by default; importing this module
installs a quiet handler, since kvmctl reports errors itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import libvirt

from kvmctl.errors import HostError, UsageError

START_HINT = "start it with `virtlogd -d && libvirtd -d`, or `systemctl start libvirtd`"


def _quiet(_ctx: object, _err: object) -> None:
    """Swallow libvirt's default stderr printing; errors are raised and mapped instead."""


libvirt.registerErrorHandler(_quiet, None)


def format_version(number: int) -> str:
    """libvirt packs versions as major * 1_000_000 + minor * 1_000 + release."""
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


def library_version() -> str:
    """The version of the libvirt client library this process uses."""
    return format_version(libvirt.getVersion())


def is_remote_uri(uri: str | None) -> bool:
    """True when the URI names another machine (qemu+ssh://host/system, qemu+tcp://h/...)."""
    if not uri:
        return False
    try:
        return bool(urlsplit(uri).hostname)
    except ValueError:
        return False


def _map_open_error(uri: str, err: libvirt.libvirtError) -> Exception:
    code = err.get_error_code()
    domain = err.get_error_domain()
    message = (err.get_error_message() or str(err)).strip()
    if code == libvirt.VIR_ERR_NO_CONNECT and "no connection driver" in message:
        return UsageError(
            f"'{uri}' is not a valid libvirt URI: libvirt has no driver for it "
            "(use e.g. qemu:///system or qemu+ssh://HOST/system)"
        )
    if (
        domain == libvirt.VIR_FROM_URI
        or code == libvirt.VIR_ERR_INVALID_ARG
        or (code == libvirt.VIR_ERR_INTERNAL_ERROR and "URI" in message)
    ):
        detail = message.removeprefix("internal error: ")
        return UsageError(f"'{uri}' is not a valid libvirt URI ({detail}); use e.g. qemu:///system")
    where = f"on {urlsplit(uri).hostname}" if is_remote_uri(uri) else "on this host"
    return HostError(
        f"cannot reach libvirt at {uri} ({message.rstrip('.')}): is libvirtd running {where}? "
        f"({START_HINT})"
    )


@dataclass(frozen=True)
class Versions:
    library: str
    daemon: str | None
    hypervisor: str | None


@dataclass(frozen=True)
class BootResult:
    """What became of a throw-away guest booted by `Libvirt.boot_until_marker`."""

    reached: bool  # the marker appeared on the serial console
    seconds: float  # from the start request to the marker (or to giving up)
    start_error: str | None = None  # libvirt refused or failed to start it
    stopped_early: bool = False  # the guest went away before printing the marker
    output: str = ""  # the tail of the serial console


class Libvirt:
    """One open libvirt connection. Use `connect()` to make one; close it (or use `with`)."""

    def __init__(self, conn: libvirt.virConnect, uri: str):
        self.conn = conn
        self.uri = uri

    def __enter__(self) -> Libvirt:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    # --- facts --------------------------------------------------------------

    def versions(self) -> Versions:
        daemon: str | None
        hypervisor: str | None
        try:
            daemon = format_version(self.conn.getLibVersion())
        except libvirt.libvirtError:
            daemon = None
        try:
            hypervisor = format_version(self.conn.getVersion())
        except libvirt.libvirtError:
            hypervisor = None
        return Versions(library=library_version(), daemon=daemon, hypervisor=hypervisor)

    def capabilities_xml(self) -> str:
        with _host_error(f"cannot read the capabilities of {self.uri}"):
            return str(self.conn.getCapabilities())

    def hostname(self) -> str:
        with _host_error(f"cannot read the host name of {self.uri}"):
            return str(self.conn.getHostname())

    # --- throw-away guests ----------------------------------------------------

    def boot_until_marker(
        self,
        domain_xml: str,
        serial_log: Path,
        marker: str,
        timeout: float,
        start_timeout: float = 30.0,
    ) -> BootResult:
        """Start a transient, auto-destroyed domain and wait for `marker` on its serial port.

        The domain's serial port must be `<serial type='file'>` writing to
        `serial_log` on this machine. The domain is destroyed before this
        returns, whatever happened; it is also started with AUTODESTROY so
        that it dies with this connection if this process does.
        """
        t0 = time.monotonic()
        started: dict[str, object] = {}
        lock = threading.Lock()

        def start() -> None:
            try:
                dom = self.conn.createXML(domain_xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
            except libvirt.libvirtError as err:
                with lock:
                    started["error"] = (err.get_error_message() or str(err)).strip()
                return
            with lock:
                started["dom"] = dom
                if "abandoned" in started:  # came up after we gave up waiting
                    _destroy_quietly(dom)

        # createXML is a blocking call; run it aside so a wedged daemon cannot hang us.
        worker = threading.Thread(target=start, name="kvmctl-boot", daemon=True)
        worker.start()
        worker.join(start_timeout)
        with lock:
            if "dom" not in started and "error" not in started:
                started["abandoned"] = True
                return BootResult(
                    reached=False,
                    seconds=time.monotonic() - t0,
                    start_error=f"libvirt did not start the domain within {start_timeout:g} s",
                )
        if "error" in started:
            return BootResult(
                reached=False, seconds=time.monotonic() - t0, start_error=str(started["error"])
            )
        dom = started["dom"]
        assert isinstance(dom, libvirt.virDomain)
        wanted = marker.encode()
        output = b""
        try:
            while True:
                output = _read_bytes(serial_log)
                elapsed = time.monotonic() - t0
                if wanted in output:
                    return BootResult(True, elapsed, output=_tail(output))
                if not _is_active(dom):
                    output = _read_bytes(serial_log)
                    if wanted in output:
                        return BootResult(True, elapsed, output=_tail(output))
                    return BootResult(False, elapsed, stopped_early=True, output=_tail(output))
                if elapsed >= timeout:
                    return BootResult(False, elapsed, output=_tail(output))
                time.sleep(0.05)
        finally:
            _destroy_quietly(dom)


def open_virconnect(uri: str | None, readonly: bool = False) -> libvirt.virConnect:
    """`libvirt.open` with kvmctl's error mapping, for callers that keep the raw connection.

    Raises UsageError for a URI libvirt cannot parse or has no driver for,
    HostError when the daemon behind it cannot be reached.
    """
    shown = uri or "the default libvirt URI"
    try:
        return libvirt.openReadOnly(uri or None) if readonly else libvirt.open(uri or None)
    except libvirt.libvirtError as err:
        raise _map_open_error(shown, err) from None


def connect(uri: str | None, readonly: bool = False) -> Libvirt:
    """Open a libvirt connection. `None` or "" lets libvirt pick its default URI.

    Errors as for `open_virconnect`.
    """
    conn = open_virconnect(uri, readonly)
    try:
        actual = str(conn.getURI())
    except libvirt.libvirtError:
        actual = uri or ""
    return Libvirt(conn, actual)


@contextmanager
def _host_error(what: str) -> Iterator[None]:
    try:
        yield
    except libvirt.libvirtError as err:
        raise HostError(f"{what}: {(err.get_error_message() or str(err)).strip()}") from None


def _is_active(dom: libvirt.virDomain) -> bool:
    try:
        return bool(dom.isActive())
    except libvirt.libvirtError:
        return False  # a transient domain that stopped is gone altogether


def _destroy_quietly(dom: libvirt.virDomain) -> None:
    try:
        dom.destroy()
    except libvirt.libvirtError:
        pass  # already gone


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _tail(data: bytes, limit: int = 2000) -> str:
    return data[-limit:].decode("utf-8", "replace")
