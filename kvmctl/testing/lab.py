"""A disposable second libvirt host on this machine, for migration tests.

The lab host is a libvirtd + virtlogd pair in a network namespace of its own
and a private mount namespace in which libvirt's directories (and kvmctl's
volume directory, so disks are not shared with this host, unless the lab is
made with shared storage) are bind-mounted from a private tree. It has its
own host UUID and a plain-TCP listener that is reachable only over a veth
pair to this host: nothing listens anywhere else.

Everything the lab makes is recorded in a state file under the run directory
as soon as it exists, so `LabHost.down()` (or `kvmctl lab down`) removes it
all again even after a crash: the daemons by PID, the namespace, the veth
pair and the private tree. Tests that break a running lab and mend it do so
through kvmctl.testing.labops.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kvmctl.errors import HostError
from kvmctl.state.paths import run_dir, volume_dir
from kvmctl.state.statefile import write_atomic
from kvmctl.testing import labproc as proc
from kvmctl.testing.labscripts import TCP_PORT, enter_script, libvirtd_conf

# libvirt's per-host directories, made private inside the lab's mount namespace.
LIBVIRT_DIRS = (
    "/run/libvirt",
    "/var/lib/libvirt",
    "/etc/libvirt",
    "/var/log/libvirt",
    "/var/cache/libvirt",
)
LAB_NET = ipaddress.IPv4Network("10.251.0.0/16")
READY_TIMEOUT = 30.0


@dataclass
class LabState:
    name: str
    root: str
    netns: str
    veth_host: str
    veth_lab: str
    host_address: str
    lab_address: str
    prefix: int
    host_uuid: str
    pids: dict[str, int] = field(default_factory=dict)  # daemon -> PID
    # kvmctl's volume directory is private too, unless the lab shares this
    # host's storage (as two hosts mounting the same NFS export would).
    shared_storage: bool = False

    @property
    def private_dirs(self) -> tuple[str, ...]:
        volumes = str(volume_dir())
        return LIBVIRT_DIRS if self.shared_storage else (*LIBVIRT_DIRS, volumes)

    @property
    def uri(self) -> str:
        """The lab's libvirt URI: plain TCP over the lab's own veth."""
        return f"qemu+tcp://{self.lab_address}/system"

    @property
    def migrate_uri(self) -> str:
        """Where the lab's QEMU listens for a migration stream."""
        return f"tcp://{self.lab_address}"

    def path(self, absolute: str) -> Path:
        """Where a lab-private directory (e.g. /run/libvirt) really lives."""
        return Path(self.root) / absolute.lstrip("/")


def labs_dir() -> Path:
    return run_dir() / "labs"


def _state_file(name: str) -> Path:
    return labs_dir() / f"{name}.json"


def save_state(state: LabState) -> None:
    write_atomic(_state_file(state.name), json.dumps(asdict(state), indent=2))


def load_state(name: str) -> LabState | None:
    try:
        return LabState(**json.loads(_state_file(name).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def list_labs() -> list[LabState]:
    found = [load_state(p.stem) for p in sorted(labs_dir().glob("*.json"))]
    return [s for s in found if s is not None]


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of 10.251.0.0/16 that no interface here uses yet, picked at
    random: two labs coming up at the same moment (parallel CI jobs) would
    both see the first free one before either has assigned it."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=False
    ).stdout
    free = [
        subnet
        for subnet in LAB_NET.subnets(new_prefix=30)
        if f" {subnet[1]}/" not in used and f" {subnet[2]}/" not in used
    ]
    if not free:
        raise HostError("no free /30 left in 10.251.0.0/16 for a lab veth")
    return secrets.choice(free)


def _prepare_tree(state: LabState) -> None:
    for absolute in state.private_dirs:
        state.path(absolute).mkdir(parents=True, exist_ok=True)
    etc = state.path("/etc/libvirt")
    # The host's driver settings (qemu.conf, hugetlbfs, user) carry over; only
    # the daemon's own settings and the stored objects are the lab's.
    for conf in Path("/etc/libvirt").glob("*.conf"):
        shutil.copy2(conf, etc / conf.name)
    (etc / "libvirtd.conf").write_text(libvirtd_conf(state))
    (etc / "qemu").mkdir(exist_ok=True)
    (etc / "storage").mkdir(exist_ok=True)


class LabHost:
    """`with LabHost() as lab:` gives a running second libvirt host (`lab.uri`).

    With `shared_storage=True` the lab sees this host's volume directory
    (like NFS-shared storage), so a VM moves there without --copy-storage."""

    def __init__(self, name: str | None = None, shared_storage: bool = False):
        self.name = name or f"lab{secrets.token_hex(3)}"
        self.shared_storage = shared_storage
        self.state: LabState | None = None

    def __enter__(self) -> LabState:
        return self.up()

    def __exit__(self, *_exc: object) -> None:
        self.down()

    def up(self) -> LabState:
        if os.geteuid() != 0:
            raise HostError("a lab host needs root (network and mount namespaces)")
        if load_state(self.name) is not None:
            raise HostError(f"lab '{self.name}' exists already (`kvmctl lab down {self.name}`)")
        subnet = _free_subnet()
        hosts = list(subnet.hosts())
        root = Path(f"/var/tmp/kvmctl-lab-{self.name}")
        state = LabState(
            name=self.name,
            root=str(root),
            netns=f"kvmctl-{self.name}",
            veth_host=f"kvh-{self.name}"[:15],
            veth_lab=f"kvl-{self.name}"[:15],
            host_address=str(hosts[0]),
            lab_address=str(hosts[1]),
            prefix=subnet.prefixlen,
            host_uuid=str(uuid.uuid4()),
            shared_storage=self.shared_storage,
        )
        self.state = state
        save_state(state)
        try:
            self._start(state)
        except BaseException:
            self.down()
            raise
        return state

    def _start(self, state: LabState) -> None:
        _prepare_tree(state)
        proc.run("ip", "netns", "add", state.netns)
        proc.run(
            "ip", "link", "add", state.veth_host, "type", "veth", "peer", "name", state.veth_lab
        )
        proc.run("ip", "link", "set", state.veth_lab, "netns", state.netns)
        proc.run(
            "ip", "addr", "add", f"{state.host_address}/{state.prefix}", "dev", state.veth_host
        )
        proc.run("ip", "link", "set", state.veth_host, "up")
        # Whatever happens to the veth, traffic for the lab never takes the
        # default route off this machine: a blackhole behind the link's route.
        proc.run("ip", "route", "add", "blackhole", _subnet(state), "metric", "4000")
        lab = ("ip", "netns", "exec", state.netns)
        proc.run(
            *lab, "ip", "addr", "add", f"{state.lab_address}/{state.prefix}", "dev", state.veth_lab
        )
        proc.run(*lab, "ip", "link", "set", state.veth_lab, "up")
        proc.run("unshare", "-m", "--propagation", "private", "sh", "-c", enter_script(state))
        run = state.path("/run/libvirt")
        state.pids["virtlogd"] = proc.read_pid(run / "lab-virtlogd.pid", READY_TIMEOUT)
        state.pids["libvirtd"] = proc.read_pid(run / "lab-libvirtd.pid", READY_TIMEOUT)
        save_state(state)
        proc.wait_listening(state.lab_address, TCP_PORT, READY_TIMEOUT)
        _warm(state)

    def down(self) -> None:
        state = self.state or load_state(self.name)
        if state is None:
            return
        teardown(state)
        self.state = None


def _warm(state: LabState) -> None:
    """The lab's libvirtd probes QEMU on first use (~10 s under a cold cache):
    do it now, so a test's first call is not the slow one."""
    from kvmctl.adapters.connection import open_connection
    from kvmctl.adapters.destination import identity

    conn = open_connection(state.uri)
    try:
        identity(conn)
    finally:
        conn.close()


def _subnet(state: LabState) -> str:
    return str(ipaddress.IPv4Network(f"{state.host_address}/{state.prefix}", strict=False))


def teardown(state: LabState) -> None:
    """Remove every trace of a lab: its guests' QEMUs and daemons by PID, the
    namespace and veth, the private tree and the state file."""
    for qemu in _qemu_pids(state):
        proc.kill(qemu, signal.SIGKILL)
    for daemon in ("libvirtd", "virtlogd"):
        pid = state.pids.get(daemon)
        if pid:
            proc.kill(pid, signal.SIGTERM)
            if not proc.wait_gone(pid, 10.0):
                proc.kill(pid, signal.SIGKILL)
    subprocess.run(["ip", "link", "del", state.veth_host], capture_output=True, check=False)
    subprocess.run(
        ["ip", "route", "del", "blackhole", _subnet(state), "metric", "4000"],
        capture_output=True,
        check=False,
    )
    subprocess.run(["ip", "netns", "del", state.netns], capture_output=True, check=False)
    _remove_tree(Path(state.root))
    _state_file(state.name).unlink(missing_ok=True)


def qemu_pidfiles(state: LabState) -> list[Path]:
    return sorted(state.path("/run/libvirt/qemu").glob("*.pid"))


def qemu_pid(state: LabState, domain: str) -> int | None:
    try:
        return int((state.path("/run/libvirt/qemu") / f"{domain}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _qemu_pids(state: LabState) -> list[int]:
    pids = []
    for pidfile in qemu_pidfiles(state):
        try:
            pids.append(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            continue
    return pids


def _remove_tree(root: Path) -> None:
    # The bind mounts lived only in the lab's mount namespace, which is gone
    # with its processes; what is left is plain directories.
    if root.is_dir() and root.name.startswith("kvmctl-lab-"):
        shutil.rmtree(root, ignore_errors=True)
