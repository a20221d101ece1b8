"""What every guest image build shares: errors, logging, running tools, and
publishing artifacts under a manifest (files first, manifest last).

Standard library only, like the builds that import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST_FORMAT = 1
MANIFEST = "manifest.json"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"guest-images: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        label: str | None = None) -> str:
    """stdout of argv; on failure a BuildError naming it (`label`, or the whole
    command line) with the last lines it printed."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, check=True, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise BuildError(f"{argv[0]} not found: {exc}") from exc
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip().splitlines()[-3:]
        raise BuildError(f"{label or ' '.join(argv)} failed: {' | '.join(detail)}") from exc
    return proc.stdout


def host_version(pkg: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", pkg],
            check=False, capture_output=True, text=True,
        ).stdout
    except FileNotFoundError:
        return None
    status, _, version = out.partition("\t")
    return version if status.endswith(" installed") and version else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_entries(directory: Path, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each named file, made readable by QEMU (libvirt-qemu)."""
    entries = {}
    for name in names:
        p = directory / name
        os.chmod(p, 0o644)
        entries[name] = {"sha256": file_sha256(p), "size": p.stat().st_size}
    return entries


def publish(out_dir: Path, tmp: Path, names: list[str], manifest: dict[str, Any],
            started: float, stale: Iterable[str] = ()) -> None:
    """Move the files named in `names` from `tmp` into `out_dir`, drop `stale`
    ones the new build does not make, then write the manifest.

    Readers check the manifest against the files, so the files go first and
    the manifest last: a half-finished update reads as corrupt, never as a
    valid old manifest over new files.
    """
    for name in names:
        os.replace(tmp / name, out_dir / name)
    for name in stale:
        if name not in names:
            (out_dir / name).unlink(missing_ok=True)
    manifest["build_seconds"] = round(time.monotonic() - started, 2)
    mpath = tmp / MANIFEST
    mpath.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(mpath, 0o644)
    os.replace(mpath, out_dir / MANIFEST)


def up_to_date(out_dir: Path, key: str, required: Iterable[str]) -> bool:
    """The flavour in `out_dir` was built with `key`, has the `required`
    artifacts, and every artifact still matches its sha256."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("build_key") != key:
        return False
    for name, meta in manifest.get("artifacts", {}).items():
        p = out_dir / name
        if not p.exists() or p.stat().st_size != meta.get("size"):
            return False
        if file_sha256(p) != meta.get("sha256"):
            return False
    return set(required) <= set(manifest.get("artifacts", {}))
