"""Running ansible-playbook from the test's own venv against localhost."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
RECAP = re.compile(
    r"^\S+\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def recaps(output: str) -> list[dict[str, int]]:
    return [{k: int(v) for k, v in m.groupdict().items()} for m in RECAP.finditer(output)]


def playbook(
    inventory: Path, book: str, *extra: str, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE_DIR / book), *extra]
    return subprocess.run(
        argv, env=ansible_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
