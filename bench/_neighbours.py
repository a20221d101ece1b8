"""What the safety VM's neighbours do in bench/interference.py: hog CPU,
memory and disk inside their guests, or crash and be restarted by the
supervisor, again and again."""

from __future__ import annotations

import threading

from tests.integration.ops_helpers import (
    SupervisorProcess,
    guest_run,
    guest_start,
    guest_status,
    kill_qemu,
)

# Each runs until killed. setsid makes the program a process group leader, so
# killing the group also ends the workers it forked (awk, dd).
HOGS: dict[str, list[str]] = {
    "cpu": ["/usr/bin/kvmctl-tool", "cpuloop", "86400"],
    "memory": ["/usr/bin/kvmctl-tool", "dirty", "64", "86400"],
    "disk": [
        "/bin/sh", "-c", 'while /usr/bin/kvmctl-tool diskwrite "$1" >/dev/null; do :; done',
        "sh", "32",
    ],
}


class Hogs:
    """Every hog in every given domain, started through the guest agent."""

    def __init__(self, domains: list[str]):
        self.domains = domains
        self.pids: dict[tuple[str, str], int] = {}

    def start(self) -> None:
        for dom in self.domains:
            for name, argv in HOGS.items():
                self.pids[(dom, name)] = guest_start(dom, "/usr/bin/setsid", *argv)

    def ended(self) -> list[str]:
        """Hogs that are no longer running (they should all still be)."""
        out = []
        for (dom, name), pid in self.pids.items():
            res = guest_status(dom, pid)
            if res is not None:
                why = res.stderr.strip().splitlines()[-1:] or [f"exit status {res.exitcode}"]
                out.append(f"{dom} {name} ({why[0]})")
        return out

    def stop(self) -> None:
        for dom in self.domains:
            groups = [f"-{pid}" for (d, _), pid in self.pids.items() if d == dom]
            if groups:
                guest_run(dom, "/bin/kill", "-KILL", *groups)
            # what an interrupted `dirty` leaves in guest memory
            guest_run(dom, "/bin/rm", "-f", "/dev/shm/kvmctl-dirty", "/dev/shm/kvmctl-pattern")
        self.pids.clear()


class CrashLoop(threading.Thread):
    """Kill a VM's QEMU with SIGKILL, wait until the supervisor reports it
    restarted (booted and ready), kill it again; until `finish()`."""

    def __init__(self, sup: SupervisorProcess, domain: str, vm: str, timeout: float = 180):
        super().__init__(daemon=True)
        self.sup, self.domain, self.vm, self.timeout = sup, domain, vm, timeout
        self.kills = 0
        self.restarts = 0
        self.error: str | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                mark = self.sup.mark()
                kill_qemu(self.domain)
                self.kills += 1
                self.sup.wait(self.timeout, since=mark, event="restarted", vm=self.vm)
                self.restarts += 1
        except (AssertionError, OSError) as exc:
            self.error = str(exc).splitlines()[0]

    def finish(self) -> None:
        """Stop after the restart under way, so the VM is left running."""
        self._halt.set()
        if self.is_alive():
            self.join(self.timeout + 10)
