"""The real guest's part of bench/boot.py (not a benchmark of its own): the
infotainment VM of examples/cockpit-debian.yaml (the debian-12 disk image,
cloud-init user-data) booted once by `kvmctl apply` and once by a bare
`virsh create` of the same domain XML, on the same volumes (an overlay on the
image and the NoCloud seed), each waited for the same way: kvmctl's own
ReadyWatch, for the agent's first answer and for `cloud-init status` done.

kvmctl's figure for cloud-init final is when `apply` returned (volumes, seed,
define, start, its wait); the bare one is when the wait ended after
`virsh create`, whose volumes were made beforehand and are not counted.
"""

from __future__ import annotations

import secrets
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
from _common import REPO, spec_variant, write_spec

from kvmctl import cockpit
from kvmctl.adapters.events import ensure_event_loop
from kvmctl.adapters.ready import NotReady, ReadyWatch
from kvmctl.cockpit.seed import seed_iso
from kvmctl.planner.domain import build_domain, build_volume
from kvmctl.xml.storage import StoragePool, StorageVolume

URI = "qemu:///system"
TIMEOUT = 900.0
EXAMPLE = REPO / "examples" / "cockpit-debian.yaml"


@dataclass
class Boot:
    agent: float  # s from the start to the agent's first answer
    final: float  # s from the start to cloud-init done
    virt_type: str = ""  # the domain type booted: qemu (TCG) or kvm


class AgentClock(threading.Thread):
    """Seconds from `t0` to the first answer of the agent of `domain`,
    watched from as soon as the domain exists (it starts paused, and its
    agent needs tens of seconds: nothing is missed)."""

    def __init__(self, domain: str, t0: float):
        super().__init__(daemon=True)
        self.domain, self.t0 = domain, t0
        self.seconds: float | None = None
        self.error: str | None = None

    def run(self) -> None:
        conn = libvirt.open(URI)
        try:
            while time.monotonic() - self.t0 < TIMEOUT:
                try:
                    watch = ReadyWatch(conn, self.domain, "agent")
                except libvirt.libvirtError:  # not defined yet
                    time.sleep(0.02)
                    continue
                with watch:
                    self.seconds = watch.wait(TIMEOUT) - self.t0
                return
            self.error = f"{self.domain} never appeared"
        except NotReady as err:
            self.error = str(err)
        finally:
            conn.close()

    def result(self) -> float:
        self.join(TIMEOUT)
        if self.seconds is None:
            raise RuntimeError(f"agent clock: {self.error or 'no answer'}")
        return self.seconds


def spec_file(tag: str) -> Path:
    """The example's infotainment VM alone (its cloud-init user-data as is),
    without networks or host CPU settings (shared placement only, so other
    sets on the host are no obstacle), with room for a busy host in its
    probe's timeout."""
    data = spec_variant(EXAMPLE, f"kvt-bench-deb-{tag}", keep={"ivi"})
    data.pop("host", None)
    data["vms"]["ivi"]["ready"]["timeout"] = f"{TIMEOUT:.0f}s"
    return write_spec(data)


def through_kvmctl(spec: Path) -> Boot:
    session = cockpit.open_session(spec, URI)
    domain = session.plan.vms["ivi"].domain
    session.close()
    t0 = time.monotonic()
    clock = AgentClock(domain, t0)
    clock.start()
    try:
        cockpit.apply(spec, URI)
        final = time.monotonic() - t0
        return Boot(clock.result(), final)
    finally:
        cockpit.destroy(spec, URI)


def virsh(*args: str) -> None:
    subprocess.run(["virsh", "-q", "-c", URI, *args], check=True, capture_output=True)


def bare(spec: Path) -> Boot:
    """kvmctl's XML and volumes, started by `virsh create` (paused, so the
    wait is attached before the guest runs, as kvmctl does), then resumed."""
    session = cockpit.open_session(spec, URI)
    virt, plan = session.virt, session.plan.vms["ivi"]
    assert virt is not None and plan.seed is not None
    pool = StoragePool(name=session.options.pool, target_path=session.options.pool_path)
    virt.ensure_pool(pool.to_xml(), session.options.pool)
    virt.create_volume(plan.volume.pool, build_volume(plan).to_xml())
    data = seed_iso(plan.seed)
    seed = StorageVolume(name=plan.seed.volume, capacity_bytes=len(data), format="raw")
    virt.upload_volume(plan.seed.pool, seed.to_xml(), data)
    domain = build_domain(plan, rt_by_thread=True)
    xml_text = domain.to_xml()
    virt.ensure_log_dirs(xml_text)
    xml = Path(tempfile.mkdtemp(prefix="kvmctl-bench-")) / "ivi.xml"
    xml.write_text(xml_text)
    try:
        t0 = time.monotonic()
        clock = AgentClock(plan.domain, t0)
        clock.start()
        virsh("create", "--paused", str(xml))
        with ReadyWatch(virt.conn, plan.domain, "cloud-init") as watch:
            virsh("resume", plan.domain)
            final = watch.wait(TIMEOUT) - t0
        return Boot(clock.result(), final, str(domain.type))
    finally:
        virt.stop(plan.domain)
        virt.delete_volume(plan.volume.pool, plan.volume.name)
        virt.delete_volume(plan.seed.pool, plan.seed.volume)
        session.close()


def measure() -> tuple[Boot, Boot, str]:
    """(kvmctl, bare, domain type), one run each, bare first."""
    ensure_event_loop()
    tag = secrets.token_hex(2)
    plain = bare(spec_file(tag))
    return through_kvmctl(spec_file(tag)), plain, plain.virt_type
