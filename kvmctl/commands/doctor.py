"""`kvmctl doctor`: what this host offers, and whether a cockpit can run on it."""

from __future__ import annotations

from kvmctl.commands._app import ConnectOpt, JsonOpt, app
from kvmctl.commands._app import DEFAULT_URI


@app.command()
def doctor(connect: ConnectOpt = DEFAULT_URI, json_out: JsonOpt = False) -> None:
    """Probe the host: libvirt, daemons, KVM (booted probe), CPUs, hugepages, memlock, cgroups."""
    raise NotImplementedError
