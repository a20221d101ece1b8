"""Operations on a running lab host, for tests that break it and mend it:
kill and start its libvirtd, take its link down and up, run a program inside it.
"""

from __future__ import annotations

import signal

from kvmctl.testing import labproc as proc
from kvmctl.testing.lab import READY_TIMEOUT, LabState, save_state
from kvmctl.testing.labscripts import TCP_PORT


def kill_libvirtd(state: LabState) -> None:
    """SIGKILL the lab's libvirtd (its QEMUs keep running, as on a real host)."""
    pid = state.pids.pop("libvirtd", None)
    if pid:
        proc.kill(pid, signal.SIGKILL)
        proc.wait_gone(pid, 10.0)
    save_state(state)


def inside(state: LabState) -> list[str]:
    """The command prefix that runs a program on the lab host: in its mount
    and network namespaces (its /run/libvirt, its libvirtd on qemu:///system),
    as kvmctl runs on a second machine."""
    anchor = state.pids["virtlogd"]  # lives as long as the lab, in both namespaces
    return ["nsenter", f"--target={anchor}", "--mount", "--net", "--"]


def start_libvirtd(state: LabState) -> None:
    """Start the lab's libvirtd again inside the lab's namespaces."""
    pidfile = state.path("/run/libvirt") / "lab-libvirtd.pid"
    pidfile.unlink(missing_ok=True)
    proc.run(
        *inside(state),
        "libvirtd",
        "-d",
        "--listen",
        "-f",
        "/etc/libvirt/libvirtd.conf",
        "--pid-file",
        "/run/libvirt/lab-libvirtd.pid",
    )
    state.pids["libvirtd"] = proc.read_pid(pidfile, READY_TIMEOUT)
    save_state(state)
    proc.wait_listening(state.lab_address, TCP_PORT, READY_TIMEOUT)


def set_link(state: LabState, up: bool) -> None:
    """Take the lab's end of the veth down (a network loss) or up again. The
    host's end stays up, so its route (and the blackhole behind it) keeps the
    lab's addresses on this machine."""
    proc.run(
        "ip",
        "netns",
        "exec",
        state.netns,
        "ip",
        "link",
        "set",
        state.veth_lab,
        "up" if up else "down",
    )
