"""`kvmctl lab up|list|down` by hand: a lab host comes up, is listed, sees this
host's volume directory only with --shared-storage, and leaves nothing behind."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from kvmctl.state.paths import volume_dir
from kvmctl.testing import lab as labs
from kvmctl.testing import labops
from tests.integration.cockpit_helpers import kvmctl, kvmctl_json

pytestmark = [pytest.mark.integration, pytest.mark.no_set]


def _sees(state: labs.LabState, path: Path) -> bool:
    run = subprocess.run([*labops.inside(state), "test", "-e", str(path)], check=False)
    return run.returncode == 0


@pytest.mark.parametrize("shared", [False, True])
def test_lab_up_list_down(shared: bool) -> None:
    name = f"c{secrets.token_hex(3)}"
    marker = volume_dir() / f".kvt-lab-{name}"
    args = ["lab", "up", name] + (["--shared-storage"] if shared else [])
    up = kvmctl_json(*args)
    try:
        assert up["shared_storage"] is shared and up["uri"].startswith("qemu+tcp://10.251.")
        assert name in [lab["name"] for lab in kvmctl_json("lab", "list")]
        state = labs.load_state(name)
        assert state is not None
        marker.write_text("here\n")
        assert _sees(state, marker) is shared
    finally:
        marker.unlink(missing_ok=True)
        down = kvmctl("lab", "down", name)
    assert down.returncode == 0, down.stderr
    assert labs.load_state(name) is None
    assert (
        f"kvmctl-{name}"
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert kvmctl("lab", "down", name).returncode == 2
