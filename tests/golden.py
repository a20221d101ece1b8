"""Golden-file comparison shared by every test that pins generated text.

A missing golden file is written and the test passes, so adding a case is
one run; under CI a missing file fails instead, since it was never reviewed.
``pytest --regenerate`` (or KVMCTL_REGENERATE=1) rewrites them all; review
the diff before committing.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def assert_golden(path: Path, text: str, regenerate: bool) -> None:
    if regenerate or (not path.exists() and not os.environ.get("CI")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.exists():
        raise AssertionError(
            f"golden file {path} is missing; run pytest --regenerate and commit it"
        )
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path),
                tofile="generated",
            )
        )
        raise AssertionError(f"output differs from {path} (pytest --regenerate to accept):\n{diff}")
