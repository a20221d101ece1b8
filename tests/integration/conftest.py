"""Shared integration fixtures: real libvirtd, real QEMU guests, real bridges.

A test guest is one of the built-in images (`guest-images/`) booted directly
(kernel + initrd) under libvirt from a minimal domain XML built here with
lxml. The domain type is `qemu` (TCG) unless KVMCTL_TEST_DOMAIN_TYPE says
otherwise: on the CI hosts KVM is listed but cannot boot a guest.

Everything a test creates (domains, volumes, the storage pool, bridges, the
work directory) is removed by finalizers, also when the test fails. Names
start with `kvt-` plus a random token, so parallel runs never collide.

The helpers (`GuestSpec`, `Nic`, `TestGuest`, `GuestFactory`, ...) carry no
pytest dependency so `bench/boot.py` reuses them.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import pytest
from lxml import etree

from kvmctl.adapters.events import ensure_event_loop
from kvmctl.errors import HostError
from kvmctl.host import images
from tests.integration.guest_agent import ExecResult, agent_command, exec_start, exec_status
from tests.integration.schedule import pytest_collection_modifyitems  # noqa: F401  (a hook)

URI = os.environ.get("KVMCTL_TEST_URI", "qemu:///system")
DOMAIN_TYPE = os.environ.get("KVMCTL_TEST_DOMAIN_TYPE", "qemu")
REPO = Path(__file__).resolve().parents[2]
AGENT_CHANNEL = "org.qemu.guest_agent.0"

# Under TCG on two cores a guest reaches KVMCTL-READY in 3-6 s; leave room
# for a loaded CI machine without letting a hung guest stall the suite.
BOOT_TIMEOUT = float(os.environ.get("KVMCTL_TEST_BOOT_TIMEOUT", "60"))


def token(n: int = 3) -> str:
    return secrets.token_hex(n)


def random_mac() -> str:
    # 52:54:00 is the prefix libvirt and QEMU use for generated addresses.
    tail = secrets.token_bytes(3)
    return "52:54:00:" + ":".join(f"{b:02x}" for b in tail)


# --------------------------------------------------------------------------- libvirt events


def start_event_loop() -> None:
    """libvirt's default event loop, shared with the product code in this
    process (registering it twice would give two loops fighting over events).

    Must happen before the connection that wants domain events is opened.
    """
    ensure_event_loop()
    # Expected failures (agent not up yet) are handled by the callers;
    # libvirt's default handler would print each one to stderr.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


# --------------------------------------------------------------------------- domain XML


@dataclass
class Nic:
    """A virtio NIC on an existing bridge; the guest sets `cidr` on it by MAC."""

    bridge: str
    cidr: str | None = None
    mac: str = field(default_factory=random_mac)


@dataclass
class GuestSpec:
    name: str
    flavour: str = "test-guest"
    memory_mib: int = 256
    vcpus: int = 1
    cmdline_extra: Mapping[str, str | None] = field(default_factory=dict)
    nics: Sequence[Nic] = ()
    data_disk_mib: int | None = 64
    watchdog: str | None = None  # libvirt action: reset, poweroff, pause, none, ...
    display: bool = False  # VGA + VNC on 127.0.0.1, for screenshots
    machine: str | None = None  # e.g. "q35"; libvirt's default (i440fx "pc") when None
    kernel: Path | None = None  # boot this instead of the image's boot_kernel
    domain_type: str = DOMAIN_TYPE


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def domain_xml(
    spec: GuestSpec, image: images.GuestImage, serial_log: Path, disk: Path | None
) -> str:
    """A minimal direct-kernel-boot domain for a test guest."""
    nics = [(n.mac, n.cidr) for n in spec.nics if n.cidr]
    cmdline = image.cmdline(spec.name, nics, spec.cmdline_extra)

    dom = etree.Element("domain", type=spec.domain_type)
    _sub(dom, "name", spec.name)
    _sub(dom, "memory", str(spec.memory_mib), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus))
    os_el = _sub(dom, "os")
    if spec.machine:
        _sub(os_el, "type", "hvm", arch="x86_64", machine=spec.machine)
    else:
        _sub(os_el, "type", "hvm", arch="x86_64")
    _sub(os_el, "kernel", str(spec.kernel or image.kernel))
    _sub(os_el, "initrd", str(image.initrd))
    _sub(os_el, "cmdline", cmdline)
    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    dev = _sub(dom, "devices")
    # No USB: libvirt would add a UHCI controller whose early handoff quirk
    # alone costs 0.3-0.5 s of every boot under TCG.
    _sub(dev, "controller", type="usb", model="none")
    if disk is not None:
        d = _sub(dev, "disk", type="file", device="disk")
        _sub(d, "driver", name="qemu", type="qcow2")
        _sub(d, "source", file=str(disk))
        _sub(d, "target", dev="vda", bus="virtio")
    for nic in spec.nics:
        i = _sub(dev, "interface", type="bridge")
        _sub(i, "mac", address=nic.mac)
        _sub(i, "source", bridge=nic.bridge)
        _sub(i, "model", type="virtio")
    serial = _sub(dev, "serial", type="file")
    # append: the log survives destroy/start, so markers can be counted from
    # an offset instead of racing a truncation.
    _sub(serial, "source", path=str(serial_log), append="on")
    _sub(serial, "target", port="0")
    channel = _sub(dev, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=AGENT_CHANNEL)
    if spec.watchdog:
        _sub(dev, "watchdog", model="i6300esb", action=spec.watchdog)
    if spec.display:
        _sub(dev, "graphics", type="vnc", listen="127.0.0.1", autoport="yes")
        video = _sub(dev, "video")
        _sub(video, "model", type="vga")
    _sub(dev, "memballoon", model="virtio")
    rng = _sub(dev, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    return etree.tostring(dom, pretty_print=True, encoding="unicode")


def volume_xml(name: str, capacity_mib: int) -> str:
    vol = etree.Element("volume")
    _sub(vol, "name", name)
    _sub(vol, "capacity", str(capacity_mib), unit="MiB")
    target = _sub(vol, "target")
    _sub(target, "format", type="qcow2")
    return etree.tostring(vol, encoding="unicode")


def pool_xml(name: str, path: Path) -> str:
    pool = etree.Element("pool", type="dir")
    _sub(pool, "name", name)
    target = _sub(pool, "target")
    _sub(target, "path", str(path))
    return etree.tostring(pool, encoding="unicode")


# --------------------------------------------------------------------------- guests


class GuestError(AssertionError):
    """A test guest did not do what was expected; carries its serial log tail."""


class TestGuest:
    """A running (or defined) test guest and the ways a test talks to it."""

    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        spec: GuestSpec,
        serial_log: Path,
        volume: libvirt.virStorageVol | None,
    ):
        self.conn = conn
        self.dom = dom
        self.spec = spec
        self.serial_log = serial_log
        self.volume = volume
        self.volume_path = volume.path() if volume is not None else ""

    @property
    def name(self) -> str:
        return self.spec.name

    # serial console -------------------------------------------------------

    def serial_bytes(self) -> bytes:
        try:
            return self.serial_log.read_bytes()
        except FileNotFoundError:
            return b""

    def serial_text(self) -> str:
        return self.serial_bytes().decode("utf-8", "replace")

    def mark(self) -> int:
        """An offset in the serial log: later waits look only past it."""
        return len(self.serial_bytes())

    def wait_for(self, marker: str, *, since: int = 0, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait for `marker` on the serial console after offset `since`; seconds waited."""
        start = time.monotonic()
        needle = marker.encode()
        while True:
            if needle in self.serial_bytes()[since:]:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise GuestError(
                    f"{self.name}: no '{marker}' on the serial console within {timeout:.0f}s;"
                    f" last output:\n{self.serial_text()[-2000:]}"
                )
            if not self.dom.isActive() and marker != images.PROBE_MARKER:
                raise GuestError(
                    f"{self.name} stopped before '{marker}'; last output:\n"
                    f"{self.serial_text()[-2000:]}"
                )
            time.sleep(0.02)

    def wait_ready(self, *, since: int = 0, timeout: float = BOOT_TIMEOUT) -> float:
        return self.wait_for(f"{images.READY_MARKER} {self.name}", since=since, timeout=timeout)

    # lifecycle -----------------------------------------------------------

    def start(self) -> None:
        self.dom.create()

    def destroy(self) -> None:
        if self.dom.isActive():
            self.dom.destroy()

    def reboot(self, *, timeout: float = BOOT_TIMEOUT) -> None:
        """An orderly reboot through the agent; returns once the guest is ready again."""
        mark = self.mark()
        self.dom.reboot(libvirt.VIR_DOMAIN_REBOOT_GUEST_AGENT)
        self.wait_ready(since=mark, timeout=timeout)

    def screenshot(self) -> tuple[str, bytes]:
        """(mime type, image bytes) of the first display."""
        stream = self.conn.newStream(0)
        try:
            mime = self.dom.screenshot(stream, 0, 0)
            chunks: list[bytes] = []
            stream.recvAll(lambda _s, data, buf: buf.append(data), chunks)
            stream.finish()
        except libvirt.libvirtError:
            stream.abort()
            raise
        return mime, b"".join(chunks)

    # agent ---------------------------------------------------------------

    def agent(
        self, command: str, arguments: Mapping[str, Any] | None = None, timeout: int = 10
    ) -> Any:
        """One agent command through libvirt; its `return` value."""
        return agent_command(self.dom, command, arguments, timeout)

    def wait_agent(self, timeout: float = BOOT_TIMEOUT) -> float:
        start = time.monotonic()
        while True:
            try:
                self.agent("guest-ping", timeout=2)
                return time.monotonic() - start
            except libvirt.libvirtError as exc:
                if time.monotonic() - start > timeout:
                    raise GuestError(f"{self.name}: agent not answering: {exc}") from exc
                time.sleep(0.05)

    def exec(
        self,
        path: str,
        args: Sequence[str] = (),
        *,
        timeout: float = 60,
        stdin: bytes | None = None,
    ) -> ExecResult:
        """Run a program in the guest through guest-exec and wait for it."""
        pid = exec_start(self.dom, path, args, stdin)
        deadline = time.monotonic() + timeout
        while True:
            result = exec_status(self.dom, pid)
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise GuestError(
                    f"{self.name}: {path} {' '.join(args)} still running after {timeout}s"
                )
            time.sleep(0.05)

    def sh(self, script: str, *args: str, timeout: float = 60) -> ExecResult:
        """`sh -c script sh args...`: values travel as arguments, never pasted into the script."""
        return self.exec("/bin/sh", ["-c", script, "sh", *args], timeout=timeout)

    def tool(self, *args: str, timeout: float = 60, check: bool = True) -> ExecResult:
        """Run kvmctl-tool in the guest; by default fail on a non-zero exit."""
        res = self.exec("/usr/bin/kvmctl-tool", args, timeout=timeout)
        if check and not res.ok:
            raise GuestError(
                f"{self.name}: kvmctl-tool {' '.join(args)} exited {res.exitcode}:"
                f" {res.stdout}{res.stderr}"
            )
        return res


class GuestFactory:
    """Creates test guests and removes every one of them (domain, volume) on cleanup."""

    def __init__(self, conn: libvirt.virConnect, pool: libvirt.virStoragePool, workdir: Path):
        self.conn = conn
        self.pool = pool
        self.workdir = workdir
        self.guests: list[TestGuest] = []

    def __call__(
        self,
        name: str | None = None,
        *,
        flavour: str = "test-guest",
        memory_mib: int = 256,
        vcpus: int = 1,
        cmdline_extra: Mapping[str, str | None] | None = None,
        nics: Sequence[Nic | tuple[str, str | None]] = (),
        data_disk_mib: int | None = 64,
        watchdog: str | None = None,
        display: bool = False,
        start: bool = True,
        wait: bool = True,
    ) -> TestGuest:
        """Define (and by default start and wait for) a guest named `kvt-NAME-XXXXXX`.

        `nics` holds `Nic`s or (bridge, cidr or None) pairs; MACs are random.
        """
        spec = GuestSpec(
            name=f"kvt-{name or 'guest'}-{token()}",
            flavour=flavour,
            memory_mib=memory_mib,
            vcpus=vcpus,
            cmdline_extra=dict(cmdline_extra or {}),
            nics=[n if isinstance(n, Nic) else Nic(n[0], n[1]) for n in nics],
            data_disk_mib=data_disk_mib,
            watchdog=watchdog,
            display=display,
        )
        return self.create(spec, start=start, wait=wait)

    def create(self, spec: GuestSpec, *, start: bool = True, wait: bool = True) -> TestGuest:
        image = images.artifacts(spec.flavour)
        vol = None
        disk = None
        if spec.data_disk_mib:
            vol = self.pool.createXML(volume_xml(f"{spec.name}-data.qcow2", spec.data_disk_mib), 0)
            disk = Path(vol.path())
        serial_log = self.workdir / f"{spec.name}.serial.log"
        try:
            dom = self.conn.defineXML(domain_xml(spec, image, serial_log, disk))
        except libvirt.libvirtError:
            if vol is not None:
                vol.delete(0)
            raise
        guest = TestGuest(self.conn, dom, spec, serial_log, vol)
        self.guests.append(guest)
        if start:
            guest.start()
            if wait:
                guest.wait_ready()
                guest.wait_agent()
        return guest

    def remove(self, guest: TestGuest) -> None:
        """Destroy, undefine and delete the disk, through a fresh connection if
        the old one died (libvirtd restarted): leftovers must not outlive a test."""
        self.conn = live_connection(self.conn)
        try:
            dom = self.conn.lookupByName(guest.name)
        except libvirt.libvirtError:
            dom = None
        if dom is not None:
            try:
                if dom.isActive():
                    dom.destroy()
            except libvirt.libvirtError:
                pass
            try:
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                )
            except libvirt.libvirtError:
                pass
        if guest.volume is not None:
            path = guest.volume_path
            try:
                self.conn.storageVolLookupByPath(path).delete(0)
            except libvirt.libvirtError:
                # The pool may be gone with a libvirtd restart; the file is ours.
                Path(path).unlink(missing_ok=True)

    def cleanup(self) -> None:
        while self.guests:
            self.remove(self.guests.pop())


# --------------------------------------------------------------------------- host resources


def ensure_images(flavours: Sequence[str] = images.FLAVOURS) -> dict[str, images.GuestImage]:
    """The verified images, built once with guest-images/build.sh when missing."""
    try:
        return {f: images.artifacts(f) for f in flavours}
    except HostError:
        subprocess.run([str(REPO / "guest-images" / "build.sh")], check=True)
        return {f: images.artifacts(f) for f in flavours}


def make_workdir() -> Path:
    # /var/tmp, not pytest's tmp_path: QEMU runs as libvirt-qemu and must reach
    # the serial logs and volumes, and pytest's base directory is mode 0700.
    path = Path(tempfile.mkdtemp(prefix="kvt-", dir="/var/tmp"))
    path.chmod(0o755)
    return path


def create_pool(
    conn: libvirt.virConnect, workdir: Path, name: str | None = None
) -> libvirt.virStoragePool:
    """A transient dir pool under `workdir`, or the running one of that name.

    Transient: it disappears with destroy() and leaves no definition behind
    (also when libvirtd restarts, hence "or recreate it").
    """
    name = name or f"kvt-pool-{token()}"
    try:
        return conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        pass
    path = workdir / "pool"
    path.mkdir(mode=0o755, exist_ok=True)
    return conn.storagePoolCreateXML(pool_xml(name, path), 0)


def live_connection(
    conn: libvirt.virConnect, uri: str = URI, patience: float = 30
) -> libvirt.virConnect:
    """`conn` if it still works, else a new one to the same URI, waiting out a
    libvirtd restart (its socket is missing for a few seconds)."""
    try:
        if conn.isAlive():
            return conn
    except libvirt.libvirtError:
        pass
    deadline = time.monotonic() + patience
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def remove_pool(pool: libvirt.virStoragePool) -> None:
    try:
        pool = live_connection(pool.connect()).storagePoolLookupByName(pool.name())
    except libvirt.libvirtError:
        return
    try:
        for vol in pool.listAllVolumes(0):
            try:
                vol.delete(0)
            except libvirt.libvirtError:
                pass
        pool.destroy()
    except libvirt.libvirtError:
        pass


def create_bridge(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="bridge")
        # No address and no IPv6 on the host side: the host takes no part in
        # the guests' traffic, and nothing leaves the bridge.
        ipv6 = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
        if ipv6.exists():
            ipv6.write_text("1\n")
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, state="up")


def delete_bridge(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def watch_domain_event(
    conn: libvirt.virConnect, dom: libvirt.virDomain, event_id: int
) -> tuple[queue.Queue[tuple[Any, ...]], Callable[[], None]]:
    """Queue of the event's callback arguments (after conn and dom), and a stop function."""
    events: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def callback(_conn: Any, _dom: Any, *args: Any) -> None:
        events.put(args[:-1])  # the last argument is the opaque value

    cb_id = conn.domainEventRegisterAny(dom, event_id, callback, None)
    return events, lambda: conn.domainEventDeregisterAny(cb_id)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def libvirt_session() -> Iterator[dict[str, libvirt.virConnect]]:
    """Holds the session's connection, opened after the event loop runs."""
    start_event_loop()
    holder = {"conn": libvirt.open(URI)}
    yield holder
    try:
        holder["conn"].close()
    except libvirt.libvirtError:
        pass  # already gone with a libvirtd restart


@pytest.fixture
def libvirt_conn(libvirt_session: dict[str, libvirt.virConnect]) -> libvirt.virConnect:
    """A working connection: the session's, or a new one if libvirtd was
    restarted since (host setup tests do that), so one restart does not fail
    every later test."""
    libvirt_session["conn"] = live_connection(libvirt_session["conn"])
    return libvirt_session["conn"]


@pytest.fixture(scope="session")
def guest_images() -> dict[str, images.GuestImage]:
    return ensure_images()


@pytest.fixture(scope="session")
def kvt_workdir() -> Iterator[Path]:
    path = make_workdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def test_pool_name(libvirt_session: dict[str, libvirt.virConnect]) -> Iterator[str]:
    name = f"kvt-pool-{token()}"
    yield name
    try:
        conn = live_connection(libvirt_session["conn"])
        remove_pool(conn.storagePoolLookupByName(name))
    except libvirt.libvirtError:
        pass


@pytest.fixture
def test_pool(
    libvirt_conn: libvirt.virConnect, kvt_workdir: Path, test_pool_name: str
) -> libvirt.virStoragePool:
    """The session's transient volume pool (recreated if libvirtd lost it)."""
    return create_pool(libvirt_conn, kvt_workdir, test_pool_name)


@pytest.fixture
def guest_factory(
    libvirt_conn: libvirt.virConnect,
    test_pool: libvirt.virStoragePool,
    kvt_workdir: Path,
    guest_images: dict[str, images.GuestImage],
) -> Iterator[GuestFactory]:
    """Call it to boot test guests: `guest_factory("name", flavour=..., nics=[Nic(br, cidr)])`."""
    factory = GuestFactory(libvirt_conn, test_pool, kvt_workdir)
    yield factory
    factory.cleanup()


@pytest.fixture
def test_guest(guest_factory: GuestFactory) -> TestGuest:
    """One ready test-guest flavour guest with a data disk and no NIC."""
    return guest_factory("g")


@pytest.fixture
def bridge_factory() -> Iterator[Callable[[], str]]:
    """Call it for a fresh Linux bridge `kvt-XXXXXX` (no uplink, no host address)."""
    made: list[str] = []

    def make() -> str:
        name = f"kvt-{token()}"
        create_bridge(name)
        made.append(name)
        return name

    yield make
    for name in made:
        delete_bridge(name)


@pytest.fixture
def test_bridge(bridge_factory: Callable[[], str]) -> str:
    return bridge_factory()


@pytest.fixture
def domain_events(
    libvirt_conn: libvirt.virConnect,
) -> Iterator[Callable[[libvirt.virDomain, int], queue.Queue[tuple[Any, ...]]]]:
    """Call with (domain, VIR_DOMAIN_EVENT_ID_...) for a queue of that domain's events."""
    stops: list[Callable[[], None]] = []

    def watch(dom: libvirt.virDomain, event_id: int) -> queue.Queue[tuple[Any, ...]]:
        events, stop = watch_domain_event(libvirt_conn, dom, event_id)
        stops.append(stop)
        return events

    yield watch
    for stop in stops:
        try:
            stop()
        except libvirt.libvirtError:
            pass


@pytest.fixture(scope="session", autouse=True)
def _state_root() -> Iterator[Path]:
    """Every kvmctl state path of the session (run, locks, applied specs,
    history, snapshots, serial logs, labs) under one new, empty
    KVMCTL_STATE_ROOT: the suite starts from nothing as a fresh machine
    does, and sets a test removes by sweeping leave no record on the host.
    Mode 0755 as on /: virtlogd and QEMU (another user) open files there."""
    old = os.environ.get("KVMCTL_STATE_ROOT")
    root = Path(tempfile.mkdtemp(prefix="kvmctl-state-"))
    root.chmod(0o755)
    os.environ["KVMCTL_STATE_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("KVMCTL_STATE_ROOT", None)
    else:
        os.environ["KVMCTL_STATE_ROOT"] = old
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tree_images() -> Iterator[Path]:
    """The test guest built from this tree (idempotent, seconds with the
    build cache of `make images`): the host's shared image directory may hold
    one built from another tree, whose toolbox has no heartbeat command."""
    out = Path(os.environ["KVMCTL_STATE_ROOT"]) / "images"
    build = subprocess.run(
        [str(REPO / "guest-images" / "build.sh"), "test-guest"],
        env={**os.environ, "KVMCTL_IMAGE_DIR": str(out)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KVMCTL_IMAGE_DIR", str(out))  # for every kvmctl the tests run
        yield out
