"""Every path kvmctl writes, in one place (see docs/design.md, "State on the host").

Each is read from the environment at call time, so a test (or a second
installation) can point kvmctl at an empty tree with one variable,
``KVMCTL_STATE_ROOT``, and single paths can still be moved one by one:

| path            | default                          | variable              |
|-----------------|----------------------------------|-----------------------|
| run directory   | ROOT/run/kvmctl                  | KVMCTL_RUN_DIR        |
| set locks       | RUN/locks                        | KVMCTL_LOCK_DIR       |
| supervisor state| RUN/supervise                    | KVMCTL_SUPERVISE_DIR  |
| channel sockets | RUN/channels                     | KVMCTL_CHANNEL_DIR    |
| applied specs   | ROOT/var/lib/kvmctl/specs        | KVMCTL_SPECS_DIR      |
| history         | ROOT/var/lib/kvmctl/history      | KVMCTL_HISTORY_DIR    |
| snapshots       | ROOT/var/lib/kvmctl/snapshots    | KVMCTL_SNAPSHOT_DIR   |
| warm states     | ROOT/var/lib/kvmctl/warm         | KVMCTL_WARM_DIR       |
| serial logs     | ROOT/var/log/kvmctl              | KVMCTL_LOG_DIR        |
| guest images    | /var/lib/kvmctl/images           | KVMCTL_IMAGE_DIR      |
| volumes (pool)  | /var/lib/kvmctl/volumes          | KVMCTL_VOLUME_DIR     |

Guest images and the storage pool's directory are not under the state root:
images are build artifacts (``make images``), and the pool is one libvirt
object per host whose directory libvirt itself keeps.

Nothing here touches the disk but `ensure_dir`; the writers call it (or
`kvmctl.state.statefile.write_atomic`, which does) before their first write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

IMAGE_DIR = "/var/lib/kvmctl/images"
VOLUME_DIR = "/var/lib/kvmctl/volumes"
# Readable by QEMU (libvirt-qemu) and virtlogd, writable by root only.
DIR_MODE = 0o755


def _env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def state_root() -> Path:
    return _env("KVMCTL_STATE_ROOT") or Path("/")


def _under_root(path: str) -> Path:
    return state_root() / path.lstrip("/")


def run_dir() -> Path:
    """Per-boot state (locks, caches, supervisor state, sockets). Root uses
    ROOT/run/kvmctl; anyone else $XDG_RUNTIME_DIR/kvmctl, since /run is root's."""
    configured = _env("KVMCTL_RUN_DIR")
    if configured:
        return configured
    if os.geteuid() == 0 or "KVMCTL_STATE_ROOT" in os.environ:
        return _under_root("/run/kvmctl")
    return Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / "kvmctl"


def lib_dir() -> Path:
    return _under_root("/var/lib/kvmctl")


def lock_dir() -> Path:
    return _env("KVMCTL_LOCK_DIR") or run_dir() / "locks"


def supervise_dir() -> Path:
    return _env("KVMCTL_SUPERVISE_DIR") or run_dir() / "supervise"


def channel_dir() -> Path:
    """Host ends of serial channels: unix sockets libvirt listens on."""
    return _env("KVMCTL_CHANNEL_DIR") or run_dir() / "channels"


def specs_dir() -> Path:
    return _env("KVMCTL_SPECS_DIR") or lib_dir() / "specs"


def history_dir() -> Path:
    return _env("KVMCTL_HISTORY_DIR") or lib_dir() / "history"


def snapshot_dir() -> Path:
    return _env("KVMCTL_SNAPSHOT_DIR") or lib_dir() / "snapshots"


def warm_dir() -> Path:
    """What each warm-start VM's saved state was taken for (kvmctl.state.warm)."""
    return _env("KVMCTL_WARM_DIR") or lib_dir() / "warm"


def log_dir() -> Path:
    return _env("KVMCTL_LOG_DIR") or _under_root("/var/log/kvmctl")


def image_dir() -> Path:
    return _env("KVMCTL_IMAGE_DIR") or Path(IMAGE_DIR)


def volume_dir() -> Path:
    return _env("KVMCTL_VOLUME_DIR") or Path(VOLUME_DIR)


def all_dirs() -> dict[str, Path]:
    """The directories kvmctl writes, by role: what `doctor` and the kvm_host
    role speak of."""
    return {
        "run": run_dir(),
        "locks": lock_dir(),
        "supervise": supervise_dir(),
        "channels": channel_dir(),
        "specs": specs_dir(),
        "history": history_dir(),
        "snapshots": snapshot_dir(),
        "warm": warm_dir(),
        "logs": log_dir(),
        "images": image_dir(),
        "volumes": volume_dir(),
    }


def ensure_dir(path: Path, mode: int = DIR_MODE) -> Path:
    """Create `path` and its missing parents with `mode` (not the umask's),
    so that QEMU and virtlogd, which run as other users, can reach what
    kvmctl puts there. Existing directories are left as they are."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            continue  # made by a concurrent writer
        os.chmod(directory, mode)
    return path
