"""Which spec file each set was last applied from, so verbs that act on one
VM (`kvmctl migrate VM --to URI`) can find the spec behind a domain without
being told. ``$KVMCTL_SPECS_DIR/<set>.json`` (default /var/lib/kvmctl/specs):

    {"set": "demo", "path": "/home/me/cockpit.yaml", "spec_hash": "...", "at": 1718000000.0}

Only the path is kept, not a copy: the spec stays the user's file, and a
verb that reads it again sees their current version.
"""

from __future__ import annotations

import json
import time
from contextlib import suppress
from pathlib import Path

from kvmctl.adapters.connection import open_connection
from kvmctl.adapters.virt import Virt
from kvmctl.errors import UsageError
from kvmctl.state.paths import specs_dir
from kvmctl.state.statefile import write_atomic


def remember(set_name: str, path: Path, spec_hash: str) -> None:
    """Best effort: an apply that worked is not failed by its record."""
    with suppress(OSError):
        _write(set_name, path, spec_hash)


def _write(set_name: str, path: Path, spec_hash: str) -> None:
    record = {
        "set": set_name,
        "path": str(path.resolve()),
        "spec_hash": spec_hash,
        "at": time.time(),
    }
    write_atomic(specs_dir() / f"{set_name}.json", json.dumps(record, indent=1) + "\n")


def forget(set_name: str) -> None:
    with suppress(FileNotFoundError):
        (specs_dir() / f"{set_name}.json").unlink()


def spec_of(set_name: str) -> Path:
    """The spec file `set_name` was last applied from; UsageError when unknown."""
    try:
        record = json.loads((specs_dir() / f"{set_name}.json").read_text())
    except (OSError, ValueError):
        raise UsageError(
            f"no spec on record for cockpit '{set_name}' (it is recorded by `kvmctl apply`): "
            "pass the spec file"
        ) from None
    path = Path(record["path"])
    if not path.is_file():
        raise UsageError(
            f"cockpit '{set_name}' was applied from {path}, which is gone: pass the spec file"
        )
    return path


def find_vms(virt: Virt, names: list[str]) -> tuple[Path, list[str]]:
    """(spec file, VM names) for VMs named by domain name or VM name on this
    connection. All must belong to one set."""
    owned = [(d, d.meta) for d in virt.domains() if d.meta is not None]
    sets: set[str] = set()
    vms: list[str] = []
    for name in names:
        hits = [(d, meta) for d, meta in owned if name in (d.name, meta.vm_name)]
        if not hits:
            raise UsageError(
                f"no kvmctl domain or VM named '{name}' on {virt.uri} "
                "(name the domain, or pass the spec file first)"
            )
        if len(hits) > 1:
            domains = ", ".join(sorted(d.name for d, _ in hits))
            raise UsageError(f"'{name}' is a VM of several cockpits ({domains}): name the domain")
        meta = hits[0][1]
        sets.add(meta.set_name)
        vms.append(meta.vm_name)
    if len(sets) > 1:
        raise UsageError(f"the VMs belong to different cockpits ({', '.join(sorted(sets))})")
    return spec_of(sets.pop()), vms


def spec_and_vms(targets: list[str], uri: str) -> tuple[Path | None, list[str]]:
    """Command-line targets: `SPEC [VM...]`, or VMs alone (domain or VM names
    on `uri`) whose spec is found through the record `kvmctl apply` left.
    (None, []) when there are no targets."""
    if not targets:
        return None, []
    first = Path(targets[0])
    if first.suffix in (".yaml", ".yml") or first.is_file():
        return first, targets[1:]
    virt = Virt(open_connection(uri))
    try:
        return find_vms(virt, targets)
    finally:
        virt.close()
