"""The `kvmctl` command itself, run as a subprocess: help, version, bad verbs and bad URIs.

Nothing here reaches a libvirt daemon: help and version touch nothing, and a
URI libvirt cannot parse is refused by the client library before connecting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.core import TyperArgument

from kvmctl import __version__
from kvmctl.commands import app

pytestmark = pytest.mark.unit


def kvmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "kvmctl.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


def all_verbs() -> list[tuple[str, ...]]:
    """Every command path, nested groups included: ("doctor",), ("net", "status"), ..."""
    found: list[tuple[str, ...]] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if path:
            found.append(path)
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def verbs_with_connect() -> list[str]:
    """Top-level verbs that take --connect and need no positional argument."""
    out = []
    group: Any = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        required_args = [p for p in cmd.params if isinstance(p, TyperArgument) and p.required]
        if "--connect" in opts and not required_args:
            out.append(name)
    return out


def one_line_without_traceback(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("kvmctl: ")
    return lines[0]


def test_the_known_verbs_are_registered() -> None:
    verbs = {v[0] for v in all_verbs()}
    assert {"doctor", "facts", "validate"} <= verbs


@pytest.mark.parametrize("verb", all_verbs(), ids=lambda v: " ".join(v))
def test_help_on_every_verb(verb: tuple[str, ...]) -> None:
    result = kvmctl(*verb, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Traceback" not in result.stderr


def test_top_level_help_lists_the_verbs() -> None:
    result = kvmctl("--help")
    assert result.returncode == 0
    for verb in ("doctor", "facts", "validate"):
        assert verb in result.stdout


def test_version() -> None:
    result = kvmctl("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kvmctl {__version__}"


def test_unknown_verb_is_one_sentence_and_exit_2() -> None:
    result = kvmctl("frobnicate")
    assert result.returncode == 2
    line = one_line_without_traceback(result.stderr)
    assert "frobnicate" in line and "kvmctl --help" in line


def test_unknown_option_is_exit_2() -> None:
    result = kvmctl("doctor", "--no-such-option")
    assert result.returncode == 2
    assert "--no-such-option" in one_line_without_traceback(result.stderr)


def test_the_verbs_taking_connect_include_doctor_and_facts() -> None:
    assert {"doctor", "facts"} <= set(verbs_with_connect())


@pytest.mark.parametrize("uri", ["qemu:///sys tem", "bogus://"])
@pytest.mark.parametrize("verb", ["doctor", "facts"])
def test_malformed_uri_is_one_sentence_and_exit_2(verb: str, uri: str) -> None:
    result = kvmctl(verb, "-c", uri)
    assert result.returncode == 2, result.stderr
    line = one_line_without_traceback(result.stderr)
    assert f"'{uri}' is not a valid libvirt URI" in line
    assert result.stdout == ""


def test_libvirt_default_uri_is_honoured_and_c_wins() -> None:
    from_env = kvmctl("facts", env={"LIBVIRT_DEFAULT_URI": "bogus://"})
    assert from_env.returncode == 2
    assert "'bogus://'" in one_line_without_traceback(from_env.stderr)
    flag_wins = kvmctl("facts", "-c", "qemu:///sys tem", env={"LIBVIRT_DEFAULT_URI": "bogus://"})
    assert flag_wins.returncode == 2
    assert "'qemu:///sys tem'" in one_line_without_traceback(flag_wins.stderr)


def test_remote_uri_for_doctor_is_refused_with_the_remedy() -> None:
    result = kvmctl("doctor", "-c", "qemu+ssh://soc-b/system")
    assert result.returncode == 2
    assert "kvmctl facts -o host.json` there" in one_line_without_traceback(result.stderr)
