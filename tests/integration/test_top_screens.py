"""`kvmctl top` and `kvmctl screens` on two real guests with displays.

top: per-vCPU CPU % shows the busy guest and the idle one apart, the busy
one held under its 50 % cap; the pCPU each vCPU last ran on lies in its
pinning; hugepages and memory match the spec. screens: each tile shows that
guest's own screen (it draws its name), a stopped VM gets a placeholder; the
real-time guest's tile (PVH boot, bochs DRM + fbcon) reads back as its own
name in the guest's block letters.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from tests.integration.cockpit_helpers import cli_env, cluster_and_ivi, kvmctl, kvmctl_popen, qemu
from tests.integration.ops_helpers import applied_set, domain_state, guest_run, wait_until
from tests.integration.screen_helpers import banner_bitmap, read_banner

pytestmark = pytest.mark.integration

SET = f"kvt-ts-{secrets.token_hex(2)}"
SPEC = (
    cluster_and_ivi(SET)
    + """\
  rear:
    role: passenger
    image: {builtin: test-guest-rt}
    memory: {size: 192MiB}
    disk: {size: 32MiB}
    display: {width: 1024, height: 600}
    # The serial marker comes after the banner is drawn (the agent, before).
    ready: {probe: "serial:KVMCTL-READY rear", timeout: 120s}
"""
)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with applied_set(tmp_path_factory.mktemp("ts"), SET, SPEC) as path:
        yield path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return kvmctl(*args, timeout=120, env=cli_env(**(env or {})))


def test_top_per_vm_and_vcpu(spec: Path, tmp_path: Path) -> None:
    # The IVI spins for a while; the cluster idles.
    guest_run(f"{SET}-ivi", "/usr/bin/kvmctl-tool", "cpuloop", "12", wait=False)
    time.sleep(2)
    result = run(
        "top", str(spec), "--once", "--json", "-n", "4", env={"KVMCTL_SUPERVISE_DIR": str(tmp_path)}
    )
    assert result.returncode == 0, result.stderr
    rows: dict[str, Any] = {r["vm"]: r for r in json.loads(result.stdout)["vms"]}
    assert set(rows) == {"cluster", "ivi", "rear"}
    ivi, cluster = rows["ivi"], rows["cluster"]
    assert ivi["state"] == cluster["state"] == "running"
    # The busy guest is busy, but held under its cap (50 % of a CPU, plus slack
    # for the emulator threads, which the cap does not cover). How much CPU it
    # gets below the cap is not its own: other tests' guests share the 2 CPUs
    # (a CI run saw 19.9 %), so busy is judged against the idle cluster below.
    assert 5 <= ivi["vcpus"][0]["cpu_pct"] <= 60, ivi
    assert cluster["vcpus"][0]["cpu_pct"] < ivi["vcpus"][0]["cpu_pct"] / 2, (cluster, ivi)
    for row in (ivi, cluster):
        proc = qemu(row["domain"])
        (vcpu,) = row["vcpus"]
        planned = proc.vcpus[0].affinity
        assert vcpu["affinity"] == ",".join(str(c) for c in sorted(planned))
        assert vcpu["pcpu"] in planned  # it ran where it is pinned
        assert vcpu["wait_pct"] is not None and vcpu["wait_pct"] >= 0
        assert row["pid"] == proc.pid and row["memory_mib"] == 128
        assert row["restarts"] is None  # no supervisor for this set
    assert cluster["hugepages_mib"] == 128 and ivi["hugepages_mib"] == 0

    table = run("top", str(spec), "--once", "-n", "0.5")
    assert table.returncode == 0
    assert f"{SET}/cluster" in table.stdout and "vcpu0" in table.stdout


def test_top_shows_supervisor_restarts(spec: Path, tmp_path: Path) -> None:
    (tmp_path / f"{SET}.json").write_text(
        json.dumps(
            {"set": SET, "pid": 1, "active": False, "vms": {"ivi": {"restarts": 2, "resets": 1}}}
        )
    )
    result = run(
        "top",
        str(spec),
        "--once",
        "--json",
        "-n",
        "0.5",
        env={"KVMCTL_SUPERVISE_DIR": str(tmp_path)},
    )
    rows = {r["vm"]: r for r in json.loads(result.stdout)["vms"]}
    assert rows["ivi"]["restarts"] == 3 and rows["cluster"]["restarts"] is None


def tiles(png: Path, report: dict[str, Any]) -> dict[str, Image.Image]:
    img = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    out = {}
    for t in report["tiles"]:
        x, y, w, h = t["box"]
        out[t["vm"]] = img.crop((x, y, x + w, y + h))
    return out


def lit(img: Image.Image) -> float:
    """Share of pixels that are not (nearly) black."""
    grey = img.convert("L").point(lambda v: 255 if v > 40 else 0)
    return ImageStat.Stat(grey).mean[0] / 255


def test_screens_show_each_guest_and_a_placeholder_when_stopped(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "cockpit.png"
    result = run("screens", str(spec), "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {t["vm"]: (t["slot"], t["source"], t["state"]) for t in report["tiles"]} == {
        "cluster": ("cluster", "screen", "running"),
        "ivi": ("ivi", "screen", "running"),
        "rear": ("passenger", "screen", "running"),
    }
    live = tiles(out, report)
    # Each guest drew its name in large letters: lit, and not the same picture.
    assert lit(live["cluster"]) > 0.01 and lit(live["ivi"]) > 0.01
    assert ImageChops.difference(live["cluster"], live["ivi"]).getbbox() is not None

    subprocess.run(["virsh", "destroy", f"{SET}-ivi"], check=True, capture_output=True)
    assert domain_state(f"{SET}-ivi") == "shut off"
    result = run("screens", str(spec), "-o", str(out), "--json")
    report = json.loads(result.stdout)
    sources = {t["vm"]: t["source"] for t in report["tiles"]}
    assert sources == {"cluster": "screen", "ivi": "placeholder", "rear": "screen"}
    after = tiles(out, report)
    assert ImageChops.difference(after["ivi"], live["ivi"]).getbbox() is not None
    assert ImageChops.difference(after["ivi"], after["cluster"]).getbbox() is not None
    assert "shut off" in run("screens", str(spec), "-o", str(out)).stdout


def test_rt_guest_tile_shows_its_own_name(spec: Path, tmp_path: Path) -> None:
    # test-guest-rt boots through PVH with no VGA text console: its name comes
    # through bochs DRM + fbcon. Read the letters back from its tile.
    if domain_state(f"{SET}-ivi") != "shut off":
        subprocess.run(["virsh", "destroy", f"{SET}-ivi"], check=True, capture_output=True)
    own = {vm: banner_bitmap(vm) for vm in ("rear", "cluster", "ivi")}
    out = tmp_path / "cockpit.png"

    def shot() -> dict[str, Image.Image]:
        result = run("screens", str(spec), "-o", str(out), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert {t["vm"]: t["source"] for t in report["tiles"]} == {
            "cluster": "screen",
            "ivi": "placeholder",
            "rear": "screen",
        }
        return tiles(out, report)

    def drawn() -> dict[str, Image.Image] | None:
        t = shot()
        return t if read_banner(t["rear"], len(own["rear"][0])) else None

    # fbcon flushes the framebuffer a moment after the guest wrote to it.
    live = wait_until(drawn, 30, "the RT guest's name on its tile")
    assert read_banner(live["rear"], len(own["rear"][0])) == own["rear"]
    # The same reading gives the cluster (VGA text console) its own name, and
    # neither tile reads as the other's name or as anything on the placeholder.
    assert read_banner(live["cluster"], len(own["cluster"][0])) == own["cluster"]
    assert read_banner(live["rear"], len(own["ivi"][0])) != own["ivi"]
    assert read_banner(live["cluster"], len(own["rear"][0])) != own["rear"]
    assert read_banner(live["ivi"], len(own["ivi"][0])) != own["ivi"]
    for a, b in (("rear", "cluster"), ("rear", "ivi"), ("cluster", "ivi")):
        assert ImageChops.difference(live[a], live[b]).getbbox() is not None, (a, b)


def test_screens_watch_rewrites_until_interrupted(spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "watch.png"
    proc = kvmctl_popen(
        "screens",
        str(spec),
        "-o",
        str(out),
        "--watch",
        "1",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        first = out.stat().st_mtime_ns
        while out.stat().st_mtime_ns == first and time.monotonic() < deadline:
            time.sleep(0.2)
        assert out.stat().st_mtime_ns != first, "the picture was not rewritten"
    finally:
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "Traceback" not in err
    assert Image.open(out).format == "PNG"
