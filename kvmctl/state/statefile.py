"""Small state files (records, caches, manifests) written so that a reader
never sees half of one: a temporary file beside it, then one rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kvmctl.state.paths import ensure_dir


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`, creating its directory. The temporary file
    is unique per call, so writers on several threads never share one."""
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
