"""kvmctl.state.paths: every path kvmctl writes, its defaults, the state root
and the per-path overrides, and directories made with a mode QEMU can use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kvmctl.state import paths

VARIABLES = (
    "KVMCTL_STATE_ROOT",
    "KVMCTL_RUN_DIR",
    "KVMCTL_LOCK_DIR",
    "KVMCTL_SUPERVISE_DIR",
    "KVMCTL_CHANNEL_DIR",
    "KVMCTL_SPECS_DIR",
    "KVMCTL_HISTORY_DIR",
    "KVMCTL_SNAPSHOT_DIR",
    "KVMCTL_WARM_DIR",
    "KVMCTL_LOG_DIR",
    "KVMCTL_IMAGE_DIR",
    "KVMCTL_VOLUME_DIR",
)
DEFAULTS = {
    "run": "/run/kvmctl",
    "locks": "/run/kvmctl/locks",
    "supervise": "/run/kvmctl/supervise",
    "channels": "/run/kvmctl/channels",
    "specs": "/var/lib/kvmctl/specs",
    "history": "/var/lib/kvmctl/history",
    "snapshots": "/var/lib/kvmctl/snapshots",
    "warm": "/var/lib/kvmctl/warm",
    "logs": "/var/log/kvmctl",
    "images": "/var/lib/kvmctl/images",
    "volumes": "/var/lib/kvmctl/volumes",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_defaults_for_root() -> None:
    assert {k: str(v) for k, v in paths.all_dirs().items()} == DEFAULTS


def test_state_root_prefixes_state_but_not_images_or_volumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KVMCTL_STATE_ROOT", "/tmp/fresh")
    got = {k: str(v) for k, v in paths.all_dirs().items()}
    for role, default in DEFAULTS.items():
        if role in ("images", "volumes"):
            assert got[role] == default
        else:
            assert got[role] == "/tmp/fresh" + default


@pytest.mark.parametrize(
    ("variable", "role"),
    [
        ("KVMCTL_RUN_DIR", "run"),
        ("KVMCTL_LOCK_DIR", "locks"),
        ("KVMCTL_SUPERVISE_DIR", "supervise"),
        ("KVMCTL_CHANNEL_DIR", "channels"),
        ("KVMCTL_SPECS_DIR", "specs"),
        ("KVMCTL_HISTORY_DIR", "history"),
        ("KVMCTL_SNAPSHOT_DIR", "snapshots"),
        ("KVMCTL_WARM_DIR", "warm"),
        ("KVMCTL_LOG_DIR", "logs"),
        ("KVMCTL_IMAGE_DIR", "images"),
        ("KVMCTL_VOLUME_DIR", "volumes"),
    ],
)
def test_each_path_has_its_own_override(
    monkeypatch: pytest.MonkeyPatch, variable: str, role: str
) -> None:
    monkeypatch.setenv("KVMCTL_STATE_ROOT", "/tmp/root")
    monkeypatch.setenv(variable, "/srv/elsewhere")
    assert paths.all_dirs()[role] == Path("/srv/elsewhere")


def test_run_dir_moves_the_dirs_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_RUN_DIR", "/tmp/run")
    assert paths.lock_dir() == Path("/tmp/run/locks")
    assert paths.supervise_dir() == Path("/tmp/run/supervise")
    assert paths.channel_dir() == Path("/tmp/run/channels")


def test_empty_variable_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCTL_LOG_DIR", "")
    monkeypatch.setenv("KVMCTL_STATE_ROOT", "")
    assert paths.log_dir() == Path("/var/log/kvmctl")


def test_non_root_runs_under_xdg_runtime_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert paths.run_dir() == Path("/run/user/1000/kvmctl")
    monkeypatch.setenv("KVMCTL_STATE_ROOT", "/tmp/r")
    assert paths.run_dir() == Path("/tmp/r/run/kvmctl")  # a chosen root wins


def test_ensure_dir_makes_parents_with_its_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)  # a strict umask must not leave QEMU locked out
    try:
        made = paths.ensure_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert made.is_dir()
    for d in (tmp_path / "a", tmp_path / "a" / "b", made):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755


def test_ensure_dir_leaves_existing_dirs_alone(tmp_path: Path) -> None:
    d = tmp_path / "private"
    d.mkdir(mode=0o700)
    paths.ensure_dir(d / "x")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert (d / "x").is_dir()
    paths.ensure_dir(d / "x")  # twice is fine
