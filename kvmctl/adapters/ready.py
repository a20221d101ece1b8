"""Readiness of a freshly started domain, from events rather than polling.

Attach a watcher while the domain is still paused, then resume it: nothing the
guest does can be missed. `agent` readiness is libvirt's agent-lifecycle
event (the guest agent opened its channel) confirmed by a guest-ping;
`serial:<marker>` reads the console through a non-blocking libvirt stream
driven by the event loop; `cloud-init` is the agent, then cloud-init's own
status asked through the agent until its final stage is done (a real OS is
only set up as the spec says once cloud-init has run). A domain that stops or
crashes meanwhile fails the wait at once instead of running into the timeout.
"""

from __future__ import annotations

import json
import threading
import time

import libvirt
import libvirt_qemu

from kvmctl.adapters import guestexec

_STOPPED = {
    libvirt.VIR_DOMAIN_EVENT_STOPPED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
}


# Written at the end of cloud-init's final stage, in /run: this boot's.
CLOUD_INIT_RESULT = "/run/cloud-init/result.json"


class NotReady(Exception):
    pass


class ReadyWatch:
    def __init__(self, conn: libvirt.virConnect, name: str, probe: str):
        self.conn = conn
        self.name = name
        self.marker = probe[len("serial:") :] if probe.startswith("serial:") else None
        self.cloud_init = probe == "cloud-init"
        self._ready = threading.Event()
        self._agent_seen = threading.Event()
        self._failure: str | None = None
        self.ready_at: float | None = None
        self._callbacks: list[int] = []
        self._stream: libvirt.virStream | None = None
        self._buffer = b""
        self._dom = conn.lookupByName(name)

    def __enter__(self) -> ReadyWatch:
        self._callbacks.append(
            self.conn.domainEventRegisterAny(
                self._dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        )
        if self.marker is None:
            self._callbacks.append(
                self.conn.domainEventRegisterAny(
                    self._dom, libvirt.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE, self._on_agent, None
                )
            )
        else:
            self._open_console()
        return self

    def restored(self) -> ReadyWatch:
        """The guest was restored from a saved state, its agent channel open
        all along: no connect event comes, so pings alone decide."""
        self._agent_seen.set()
        return self

    def __exit__(self, *_exc: object) -> None:
        for cb in self._callbacks:
            try:
                self.conn.domainEventDeregisterAny(cb)
            except libvirt.libvirtError:
                pass
        self._close_console()

    # --- event callbacks (event-loop thread: no blocking calls here) --------------

    def _on_lifecycle(
        self, _conn: object, _dom: object, event: int, detail: int, _o: object
    ) -> None:
        if event in _STOPPED:
            self._failure = (
                f"domain '{self.name}' stopped before it became ready (event {event}/{detail})"
            )
            self._ready.set()

    def _on_agent(self, _conn: object, _dom: object, state: int, _reason: int, _o: object) -> None:
        if state == libvirt.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED:
            self._agent_seen.set()

    def _on_console(self, stream: libvirt.virStream, _events: int, _o: object) -> None:
        try:
            data = stream.recv(4096)
        except libvirt.libvirtError:
            self._close_console()
            return
        if isinstance(data, int) or not data:  # -2: would block; b"": closed
            return
        self._buffer = (self._buffer + data)[-8192:]
        if self.marker is not None and self.marker.encode() in self._buffer:
            self.ready_at = time.monotonic()
            self._ready.set()

    def _open_console(self) -> None:
        stream = self.conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
        self._dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
        stream.eventAddCallback(
            libvirt.VIR_STREAM_EVENT_READABLE
            | libvirt.VIR_STREAM_EVENT_ERROR
            | libvirt.VIR_STREAM_EVENT_HANGUP,
            self._on_console,
            None,
        )
        self._stream = stream

    def _close_console(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        try:
            stream.eventRemoveCallback()
            stream.abort()
        except libvirt.libvirtError:
            pass

    # --- waiting (caller's thread) ---------------------------------------------------

    def wait(self, timeout: float) -> float:
        """Block until ready; return the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        if self.marker is not None:
            while not self._ready.wait(min(max(0.0, deadline - time.monotonic()), 0.5)):
                self._check_connection()
                if time.monotonic() >= deadline:
                    raise NotReady(
                        f"domain '{self.name}' did not print '{self.marker}' within {timeout:g} s"
                    )
        else:
            self._wait_agent(deadline, timeout)
            if self.cloud_init:
                self._wait_cloud_init(deadline, timeout)
        if self._failure:
            raise NotReady(self._failure)
        assert self.ready_at is not None
        return self.ready_at

    def _wait_agent(self, deadline: float, timeout: float) -> None:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if self._ping():  # the event may be lost on a reconnect: ask once more
                    self.ready_at = time.monotonic()
                    return
                raise NotReady(
                    f"the guest agent of domain '{self.name}' did not answer within {timeout:g} s"
                )
            # The event says the channel opened; a ping says the agent serves it.
            self._agent_seen.wait(min(remaining, 1.0))
            self._check_connection()
            if self._failure:
                raise NotReady(self._failure)
            if self._agent_seen.is_set() and self._ping():
                self.ready_at = time.monotonic()
                return

    def _wait_cloud_init(self, deadline: float, timeout: float) -> None:
        """`cloud-init status` once cloud-init's final stage has written its
        result file, or at the timeout; an error or the timeout names the
        stage cloud-init had reached. Until then only `cat` of that file is
        run: each `cloud-init status` starts Python, which on a slow guest
        takes the CPU from the very boot being waited for."""
        said = "cloud-init did not answer"
        while True:
            self._check_connection()
            if self._failure:
                raise NotReady(self._failure)
            if time.monotonic() < deadline and not self._cloud_init_finished():
                time.sleep(1.0)
                continue
            try:
                out = guestexec.run(self._dom, "cloud-init", ["status", "--long"], 60).stdout
            except (libvirt.libvirtError, TimeoutError) as err:
                out, said = "", f"cloud-init status failed: {err}"
            fields = _status_fields(out)
            if fields.get("status") == "done":
                self.ready_at = time.monotonic()
                return
            if out:
                said = "; ".join(f"{k}: {v}" for k, v in fields.items() if k != "time")
            if fields.get("status") == "error":
                raise NotReady(f"cloud-init in domain '{self.name}' failed ({said})")
            if time.monotonic() >= deadline:
                raise NotReady(
                    f"cloud-init in domain '{self.name}' was not done within {timeout:g} s ({said})"
                )
            time.sleep(1.0)

    def _cloud_init_finished(self) -> bool:
        """cloud-init wrote the result of its final stage (this boot's: /run)."""
        try:
            return guestexec.run(self._dom, "/bin/cat", [CLOUD_INIT_RESULT], 30).code == 0
        except (libvirt.libvirtError, TimeoutError):
            return False

    def _check_connection(self) -> None:
        """A daemon restart closes the connection, and with it the events and
        the console this watch relies on: fail now rather than at the timeout."""
        if self.conn.isAlive() != 1:
            raise NotReady(
                f"the connection to libvirt closed (daemon restarted?) while waiting for "
                f"domain '{self.name}' to become ready"
            )

    def _ping(self) -> bool:
        try:
            libvirt_qemu.qemuAgentCommand(self._dom, json.dumps({"execute": "guest-ping"}), 2, 0)
        except libvirt.libvirtError:
            return False
        return True


def _status_fields(text: str) -> dict[str, str]:
    """`cloud-init status --long` as fields: 'status', 'detail' (the stage it
    is in, or what failed), 'errors'; a field's value may run onto the next
    lines, which are joined."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        head, sep, rest = line.partition(":")
        if sep and head and not head.startswith(" ") and " " not in head:
            key = head.strip()
            fields[key] = rest.strip()
        elif key is not None and line.strip():
            fields[key] = f"{fields[key]} {line.strip()}".strip()
    return fields
