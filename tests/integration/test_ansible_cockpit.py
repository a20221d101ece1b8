"""The `cockpit` Ansible role against this host: it deploys the part of a
multi-host spec placed on this inventory host, changes nothing the second
time, and removes that part again with cockpit_state=absent."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from tests.integration.ansible_helpers import BIN, playbook, recaps
from tests.integration.cockpit_helpers import URI, domain_states, sweep, write_spec

pytestmark = pytest.mark.integration

SPEC = """\
name: {name}
hosts:
  soc-a: {{uri: "qemu+ssh://soc-a.invalid/system"}}
  soc-b: {{uri: "qemu+ssh://soc-b.invalid/system"}}
vms:
  cluster:
    host: soc-a
    memory: {{size: 128MiB}}
    disk: {{size: 16MiB}}
    ready: {{probe: agent, timeout: 90s}}
  ivi:
    host: soc-b
    memory: {{size: 128MiB}}
"""


def domains(prefix: str) -> dict[str, int]:
    return domain_states(prefix)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """(set name, the playbook's arguments) for this host as inventory host soc-a."""
    name = f"kvt-an-{secrets.token_hex(3)}"
    spec = write_spec(tmp_path, SPEC.format(name=name))
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(
        "[cockpit_hosts]\n"
        "soc-a ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n"
    )
    args = [
        str(inventory),
        "-e",
        f"cockpit_spec={spec}",
        "-e",
        f"cockpit_kvmctl={BIN / 'kvmctl'}",
        "-e",
        f"cockpit_spec_dir={tmp_path / 'etc'}",
        "-e",
        f"cockpit_libvirt_uri={URI}",
    ]
    try:
        yield name, args
    finally:
        sweep(name)


def run(args: list[str], *extra: str) -> dict[str, int]:
    inventory, *rest = args
    result = playbook(Path(inventory), "cockpit.yml", *rest, *extra)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    (recap,) = recaps(result.stdout)
    assert recap["failed"] == 0
    return recap


def test_the_role_deploys_this_hosts_part_once_and_removes_it(
    deployment: tuple[str, list[str]],
) -> None:
    name, args = deployment
    first = run(args)
    assert first["changed"] >= 2  # the spec copied, the VM created
    # Only the VM the spec places on soc-a, running here; soc-b's is not.
    assert domains(name) == {f"{name}-cluster": libvirt.VIR_DOMAIN_RUNNING}

    assert run(args)["changed"] == 0

    assert run(args, "-e", "cockpit_state=absent")["changed"] == 1
    assert domains(name) == {}
    assert run(args, "-e", "cockpit_state=absent")["changed"] == 0


def test_a_host_the_spec_does_not_declare_fails_before_anything_runs(
    deployment: tuple[str, list[str]],
) -> None:
    name, args = deployment
    inventory, *rest = args
    result = playbook(Path(inventory), "cockpit.yml", *rest, "-e", "cockpit_host=soc-c")
    assert result.returncode != 0
    assert "cockpit_host 'soc-c' is not under hosts:" in result.stdout
    assert domains(name) == {}
