"""What a lab host runs: its libvirtd.conf (plain TCP on the private veth
only) and the shell that mounts its private tree and starts its daemons
inside its namespaces. Pure text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvmctl.testing.lab import LabState

TCP_PORT = 16509


def libvirtd_conf(state: LabState) -> str:
    return "\n".join(
        [
            "# kvmctl lab host: test only, plain TCP on a private veth.",
            "listen_tcp = 1",
            "listen_tls = 0",
            f'listen_addr = "{state.lab_address}"',
            f'tcp_port = "{TCP_PORT}"',
            'auth_tcp = "none"',
            'auth_unix_rw = "none"',
            f'host_uuid = "{state.host_uuid}"',
            "keepalive_interval = 2",
            "keepalive_count = 3",
            "",
        ]
    )


def start_script(state: LabState) -> str:
    """Run inside the lab's namespaces: bind the private tree over libvirt's
    directories, then start both daemons there."""
    lines = [
        "set -e",
        "ip link set lo up",
        # `ip netns exec` mounted a fresh /sys for the namespace, without the
        # cgroup hierarchies libvirt needs for pinning, shares and caps.
        f"mount --rbind {state.path('/cgroup')} /sys/fs/cgroup",
    ]
    for absolute in state.private_dirs:
        lines.append(f"mkdir -p {absolute}")
        lines.append(f"mount --bind {state.path(absolute)} {absolute}")
    lines += [
        "virtlogd -d --pid-file /run/libvirt/lab-virtlogd.pid",
        "libvirtd -d --listen -f /etc/libvirt/libvirtd.conf "
        "--pid-file /run/libvirt/lab-libvirtd.pid",
    ]
    return "\n".join(lines)


def enter_script(state: LabState) -> str:
    """Run under `unshare -m`: keep the host's cgroup tree reachable, then enter
    the network namespace with the start script."""
    stash = state.path("/cgroup")
    return (
        f"set -e; mkdir -p {stash}; mount --rbind /sys/fs/cgroup {stash}; "
        f"exec ip netns exec {state.netns} sh -c '{start_script(state)}'"
    )
