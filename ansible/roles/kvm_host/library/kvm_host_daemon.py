#!/usr/bin/python
"""Ansible module: start or restart virtlogd/libvirtd on a host without systemd."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kvm_host_daemon
short_description: Start or restart a libvirt daemon (virtlogd, libvirtd) without systemd
description:
  - For hosts and containers that do not run systemd. The daemon counts as running when
    its PID file names a live process (not a zombie) whose command name is the daemon's.
  - C(state=started) starts the daemon with C(-d) only when it is not running.
  - C(state=restarted) sends SIGTERM to the running daemon, waits until it is gone and
    starts it again (or just starts it when it was not running).
  - Guests keep running across a libvirtd restart; libvirtd reconnects to them.
options:
  name:
    description: Daemon binary name, e.g. C(virtlogd) or C(libvirtd).
    required: true
    type: str
  state:
    description: Wanted state.
    choices: [started, restarted]
    default: started
    type: str
  pidfile:
    description: PID file the daemon writes. Default C(/run/NAME.pid), the daemons' own default.
    type: path
  socket:
    description: After a start, also wait until this UNIX socket exists.
    type: path
  timeout:
    description: Seconds to wait for the daemon to come up or go away.
    type: int
    default: 30
"""

EXAMPLES = r"""
- name: Start virtlogd
  kvm_host_daemon:
    name: virtlogd
    socket: /run/libvirt/virtlogd-sock
"""

RETURN = r"""
pid:
  description: PID of the running daemon after the task.
  type: int
  returned: success
previous_pid:
  description: PID before the task, or null when it was not running.
  type: int
  returned: success
action:
  description: What was done, C(none), C(started) or C(restarted).
  type: str
  returned: success
"""

import os
import signal
import stat
import time

from ansible.module_utils.basic import AnsibleModule


def _read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _alive_as(pid: int, name: str) -> bool:
    """True when PID is a live (non-zombie) process whose comm is NAME."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            line = handle.read()
    except OSError:
        return False
    comm = line[line.find("(") + 1 : line.rfind(")")]
    state = line[line.rfind(")") + 2 : line.rfind(")") + 3]
    return comm == name[:15] and state not in ("Z", "X", "x")


def running_pid(name: str, pidfile: str) -> int | None:
    pid = _read_pid(pidfile)
    if pid is not None and _alive_as(pid, name):
        return pid
    return None


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def start(module: AnsibleModule, name: str, pidfile: str, socket: str | None, timeout: int) -> int:
    binary = module.get_bin_path(name, required=True, opt_dirs=["/usr/sbin", "/sbin"])
    argv = [binary, "--daemon", "--pid-file", pidfile]
    rc, out, err = module.run_command(argv)
    if rc != 0:
        module.fail_json(msg=f"{name} did not start (exit {rc})", stdout=out, stderr=err, cmd=argv)
    if not _wait(lambda: running_pid(name, pidfile) is not None, timeout):
        module.fail_json(msg=f"{name} started but no live process in {pidfile} after {timeout}s")
    if socket and not _wait(lambda: _is_socket(socket), timeout):
        module.fail_json(msg=f"{name} is running but {socket} did not appear within {timeout}s")
    pid = running_pid(name, pidfile)
    assert pid is not None
    return pid


def stop(module: AnsibleModule, name: str, pid: int, timeout: int) -> None:
    def gone() -> bool:
        return not _alive_as(pid, name)

    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait(gone, timeout):
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if not _wait(gone, 5):
        module.fail_json(msg=f"{name} (pid {pid}) did not exit after SIGTERM and SIGKILL")


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "started", "choices": ["started", "restarted"]},
            "pidfile": {"type": "path"},
            "socket": {"type": "path"},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    name = module.params["name"]
    state = module.params["state"]
    pidfile = module.params["pidfile"] or f"/run/{name}.pid"
    socket = module.params["socket"]
    timeout = module.params["timeout"]

    before = running_pid(name, pidfile)
    if state == "started" and before is not None:
        module.exit_json(changed=False, pid=before, previous_pid=before, action="none")
    action = "restarted" if before is not None else "started"
    if module.check_mode:
        module.exit_json(changed=True, pid=before, previous_pid=before, action=action)
    if before is not None:
        stop(module, name, before, timeout)
    pid = start(module, name, pidfile, socket, timeout)
    module.exit_json(changed=True, pid=pid, previous_pid=before, action=action)


if __name__ == "__main__":
    main()
