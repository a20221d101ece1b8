"""The spec layer: every bad input gives a clear, located error; good input loads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kvmctl.errors import SpecError, UsageError
from kvmctl.spec import load_spec, parse_spec, spec_hash
from kvmctl.spec.semantics import find_cycle
from kvmctl.spec.units import format_size, parse_duration, parse_percent, parse_rate, parse_size

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

MINIMAL = """\
name: t
vms:
  a: {}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(textwrap.dedent(text), "c.yaml")
    return err.value.problems


def one_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.vms


def test_minimal_defaults() -> None:
    spec = parse_spec(MINIMAL)
    vm = spec.vms["a"]
    assert vm.vcpus == 1 and vm.cpu.placement == "shared"
    assert vm.memory.size == 256 * 1024**2 and vm.memory.hugepages is None
    assert vm.image.builtin == "test-guest"
    assert vm.ready.probe == "agent" and vm.ready.timeout == 60
    assert spec.host.housekeeping_cpus == [0]


def test_ready_deadline() -> None:
    assert parse_spec(MINIMAL).vms["a"].ready.deadline is None
    ready = (
        parse_spec(
            "name: t\nvms:\n  a: {ready: {timeout: 2s, deadline: 2s, deadline_fatal: true}}\n"
        )
        .vms["a"]
        .ready
    )
    assert (ready.deadline, ready.deadline_fatal) == (2.0, True)  # the timeout itself is allowed
    assert parse_spec("name: t\nvms:\n  a: {ready: {deadline: 1ms}}\n").vms["a"].ready == (
        ready.model_copy(update={"timeout": 60.0, "deadline": 0.001, "deadline_fatal": False})
    )


def test_spec_without_deadline_hashes_as_before() -> None:
    plain = parse_spec(MINIMAL)
    assert plain.vms["a"].ready.model_dump() == {"probe": "agent", "timeout": 60.0}
    timed = parse_spec("name: t\nvms:\n  a: {ready: {deadline: 3s}}\n")
    assert spec_hash(timed) != spec_hash(plain)


def test_bad_deadline_is_exit_2_naming_the_field() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec("name: t\nvms:\n  a: {ready: {timeout: 1s, deadline: 2s}}\n", "c.yaml")
    assert err.value.exit_code == 2
    assert err.value.problems[0].startswith("c.yaml:3 vms.a.ready.deadline: ")


def test_hash_is_stable_and_content_sensitive() -> None:
    a = parse_spec(MINIMAL)
    b = parse_spec("name: t\nvms:\n  a: {vcpus: 1}\n")
    c = parse_spec("name: t\nvms:\n  a: {vcpus: 2}\n")
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)


def test_attachment_short_and_long_form() -> None:
    spec = parse_spec(
        """\
        name: t
        networks:
          n: {bridge: br0, subnet: 10.0.0.0/24}
        vms:
          a: {networks: [n]}
          b:
            networks:
              - {name: n, address: 10.0.0.9, port_isolated: true, bandwidth: {average: 1MB/s}}
        """.replace("        ", "")
    )
    assert spec.vms["a"].networks[0].name == "n"
    att = spec.vms["b"].networks[0]
    assert str(att.address) == "10.0.0.9" and att.port_isolated
    assert att.bandwidth is not None
    inbound, outbound = att.bandwidth.limits()
    assert inbound is not None and inbound.average == 1_000_000 == outbound.average  # type: ignore[union-attr]


# --- bad input: (spec text, expected line, expected fragment) -------------------------

BAD = {
    "yaml-syntax": ("name: t\nvms:\n  a: {vcpus: 1\n", 4, "YAML syntax error"),
    "not-a-mapping": ("- a\n- b\n", 1, "must be a mapping"),
    "missing-name": ("vms:\n  a: {}\n", 1, "name: is required"),
    "missing-vms": ("name: t\n", 1, "vms: is required"),
    "empty-vms": ("name: t\nvms: {}\n", 2, "vms: must have at least 1 item"),
    "unknown-top": (
        "name: t\nvm:\n  a: {}\nvms:\n  a: {}\n",
        2,
        "unknown field 'vm' (did you mean 'vms'?)",
    ),
    "unknown-nested": (
        "name: t\nvms:\n  a:\n    cpu: {palcement: shared}\n",
        4,
        "vms.a.cpu.palcement: unknown field 'palcement' (did you mean 'placement'?)",
    ),
    "wrong-placement": (
        "name: t\nvms:\n  a:\n    cpu:\n      placement: sometimes\n",
        5,
        "vms.a.cpu.placement: must be 'dedicated' or 'shared'",
    ),
    "vcpus-text": ("name: t\nvms:\n  a: {vcpus: two}\n", 3, "vms.a.vcpus: must be a whole number"),
    "vcpus-zero": (
        "name: t\nvms:\n  a: {vcpus: 0}\n",
        3,
        "vms.a.vcpus: must be greater than or equal to 1",
    ),
    "vcpus-negative": (
        "name: t\nvms:\n  a: {vcpus: -2}\n",
        3,
        "vms.a.vcpus: must be greater than or equal to 1",
    ),
    "memory-unit": ("name: t\nvms:\n  a: {memory: {size: 1 parsec}}\n", 3, "unknown size unit"),
    "memory-small": ("name: t\nvms:\n  a: {memory: {size: 1MiB}}\n", 3, "at least 64MiB"),
    "hugepage-size": ("name: t\nvms:\n  a: {memory: {hugepages: 4MiB}}\n", 3, "2MiB or 1GiB"),
    "hugepage-multiple": (
        "name: t\nvms:\n  a: {memory: {size: 1536MiB, hugepages: 1GiB}}\n",
        3,
        "multiple of the hugepage size",
    ),
    "limit-range": ("name: t\nvms:\n  a: {cpu: {limit: 150%}}\n", 3, "between 1% and 100%"),
    "shares-range": ("name: t\nvms:\n  a: {cpu: {shares: 1}}\n", 3, "vms.a.cpu.shares"),
    "realtime-shared": (
        "name: t\nvms:\n  a: {cpu: {placement: shared, realtime: {priority: 5}}}\n",
        3,
        "realtime needs placement: dedicated",
    ),
    "rt-priority": (
        "name: t\nvms:\n  a: {cpu: {placement: dedicated, realtime: {priority: 100}}}\n",
        3,
        "vms.a.cpu.realtime.priority",
    ),
    "dedicated-capped": (
        "name: t\nvms:\n  a: {cpu: {placement: dedicated, limit: 50%}}\n",
        3,
        "dedicated CPU is not capped",
    ),
    "duplicate-vm": ("name: t\nvms:\n  a: {}\n  a: {vcpus: 2}\n", 4, "vms.a: duplicate key"),
    "bad-vm-name-xml": ('name: t\nvms:\n  "a<b>": {}\n', 3, "'a<b>' is not a valid name"),
    "bad-vm-name-shell": ('name: t\nvms:\n  "a;rm -rf": {}\n', 3, "is not a valid name"),
    "bad-set-name": ('name: "x\'y"\nvms:\n  a: {}\n', 1, "name: 'x'y' is not a valid name"),
    "role-metachar": ('name: t\nvms:\n  a: {role: "<script>"}\n', 3, "vms.a.role"),
    "depends-unknown": (
        "name: t\nvms:\n  a: {depends_on: [zz]}\n",
        3,
        "vms.a.depends_on[0]: unknown VM 'zz'",
    ),
    "depends-self": ("name: t\nvms:\n  a: {depends_on: [a]}\n", 3, "cannot depend on itself"),
    "depends-cycle": (
        "name: t\nvms:\n  a: {depends_on: [b]}\n  b: {depends_on: [c]}\n  c: {depends_on: [a]}\n",
        3,
        "dependency cycle: a -> b -> c -> a",
    ),
    "unknown-network": ("name: t\nvms:\n  a: {networks: [nope]}\n", 3, "unknown network 'nope'"),
    "unknown-host": ("name: t\nvms:\n  a: {host: soc-b}\n", 3, "unknown host 'soc-b'"),
    "duplicate-bridge": (
        "name: t\nnetworks:\n  n1: {bridge: br0, subnet: 10.0.0.0/24}\n"
        "  n2: {bridge: br0, subnet: 10.0.1.0/24}\nvms:\n  a: {}\n",
        4,
        "bridge 'br0' is already used by network 'n1'",
    ),
    "bridge-too-long": (
        "name: t\nnetworks:\n  n: {bridge: a-very-long-bridge-name, subnet: 10.0.0.0/24}\nvms:\n  a: {}\n",
        3,
        "not a valid bridge name",
    ),
    "bridge-bad-char": (
        'name: t\nnetworks:\n  n: {bridge: "br/0", subnet: 10.0.0.0/24}\nvms:\n  a: {}\n',
        3,
        "not a valid bridge name",
    ),
    "vlan-zero": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24, vlan: 0}\nvms:\n  a: {}\n",
        3,
        "networks.n.vlan",
    ),
    "vlan-4095": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24, vlan: 4095}\nvms:\n  a: {}\n",
        3,
        "less than or equal to 4094",
    ),
    "vlan-text": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24, vlan: twenty}\nvms:\n  a: {}\n",
        3,
        "must be a whole number",
    ),
    "subnet-bad": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.300/24}\nvms:\n  a: {}\n",
        3,
        "networks.n.subnet",
    ),
    "address-outside": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24}\n"
        "vms:\n  a: {networks: [{name: n, address: 10.0.1.5}]}\n",
        5,
        "10.0.1.5 is outside 10.0.0.0/24",
    ),
    "address-taken": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24}\n"
        "vms:\n  a: {networks: [{name: n, address: 10.0.0.5}]}\n"
        "  b: {networks: [{name: n, address: 10.0.0.5}]}\n",
        6,
        "already used by VM 'a'",
    ),
    "isolated-host-address": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24, isolated: true, "
        "host_address: 10.0.0.1}\nvms:\n  a: {}\n",
        3,
        "isolated network has no host address",
    ),
    "dedicated-on-housekeeping": (
        "name: t\nhost: {housekeeping_cpus: [0]}\n"
        "vms:\n  a: {cpu: {placement: dedicated, cpus: [0]}}\n",
        4,
        "CPU 0 is a housekeeping CPU and cannot be dedicated",
    ),
    "dedicated-twice": (
        "name: t\nvms:\n  a: {cpu: {placement: dedicated, cpus: [1]}}\n"
        "  b: {cpu: {placement: dedicated, cpus: [1]}}\n",
        4,
        "CPU 1 is already dedicated to VM 'a'",
    ),
    "dedicated-count": (
        "name: t\nvms:\n  a: {vcpus: 2, cpu: {placement: dedicated, cpus: [1]}}\n",
        3,
        "one CPU per vCPU",
    ),
    "image-outside": (
        "name: t\nvms:\n  a: {image: {path: /etc/passwd}}\n",
        3,
        "outside the allowed image directories",
    ),
    "image-dotdot": (
        "name: t\nvms:\n  a: {image: {path: /var/lib/kvmctl/images/../../../etc/shadow}}\n",
        3,
        "outside the allowed image directories",
    ),
    "image-both": (
        "name: t\nvms:\n  a: {image: {builtin: test-guest, path: /var/lib/kvmctl/images/x.qcow2}}\n",
        3,
        "exactly one of builtin or path",
    ),
    "image-unknown-builtin": (
        "name: t\nvms:\n  a: {image: {builtin: windows}}\n",
        3,
        "'test-guest', 'test-guest-rt' or 'debian-12'",
    ),
    "ready-probe": (
        "name: t\nvms:\n  a: {ready: {probe: ping}}\n",
        3,
        "'agent', 'cloud-init' or 'serial:<marker>'",
    ),
    "ready-timeout": ("name: t\nvms:\n  a: {ready: {timeout: soon}}\n", 3, "not a duration"),
    "ready-deadline-zero": (
        "name: t\nvms:\n  a: {ready: {deadline: 0s}}\n",
        3,
        "vms.a.ready.deadline: must be longer than 0 s",
    ),
    "ready-deadline-negative": (
        "name: t\nvms:\n  a: {ready: {deadline: -2}}\n",
        3,
        "vms.a.ready.deadline: must not be negative",
    ),
    "ready-deadline-text": (
        "name: t\nvms:\n  a: {ready: {deadline: quickly}}\n",
        3,
        "vms.a.ready.deadline: 'quickly' is not a duration",
    ),
    "ready-deadline-past-timeout": (
        "name: t\nvms:\n  a:\n    ready: {timeout: 10s, deadline: 10500ms}\n",
        4,
        "vms.a.ready.deadline: 10.5 s is longer than the ready timeout (10 s)",
    ),
    "ready-deadline-fatal-alone": (
        "name: t\nvms:\n  a: {ready: {deadline_fatal: true}}\n",
        3,
        "vms.a.ready.deadline_fatal: needs a ready.deadline",
    ),
    "watchdog-action": (
        "name: t\nvms:\n  a: {watchdog: {action: explode}}\n",
        3,
        "vms.a.watchdog.action",
    ),
    "bandwidth-empty": (
        "name: t\nnetworks:\n  n: {bridge: br0, subnet: 10.0.0.0/24}\n"
        "vms:\n  a: {networks: [{name: n, bandwidth: {}}]}\n",
        5,
        "needs average",
    ),
    "cloud-init-probe-on-test-guest": (
        "name: t\nvms:\n  a:\n    ready: {probe: cloud-init}\n",
        4,
        "cloud-init readiness needs a cloud image",
    ),
    "housekeeping-dup": (
        "name: t\nhost: {housekeeping_cpus: [0, 0]}\nvms:\n  a: {}\n",
        2,
        "lists a CPU twice",
    ),
    "protect-shared": (
        "name: t\nvms:\n  a: {cpu: {placement: shared, protect_emulator: true}}\n",
        3,
        "protect_emulator needs placement: dedicated",
    ),
    "protect-and-shares": (
        "name: t\nvms:\n  a:\n    cpu: {placement: dedicated, shares: 512, protect_emulator: true}\n",
        4,
        "shares and protect_emulator both set the domain's CPU weight",
    ),
    "safety-housekeeping-in-housekeeping": (
        "name: t\nhost: {housekeeping_cpus: [0], safety_housekeeping_cpus: [0]}\nvms:\n  a: {}\n",
        2,
        "CPU 0 is in housekeeping_cpus too",
    ),
    "safety-housekeeping-dedicated": (
        "name: t\nhost: {safety_housekeeping_cpus: [2]}\n"
        "vms:\n  a: {cpu: {placement: dedicated, cpus: [2]}}\n",
        4,
        "CPU 2 is a housekeeping CPU and cannot be dedicated",
    ),
    "safety-housekeeping-shared": (
        "name: t\nhost: {safety_housekeeping_cpus: [2]}\nvms:\n  a: {cpu: {cpus: [1, 2]}}\n",
        4,
        "CPU 2 is a safety housekeeping CPU and cannot be shared",
    ),
    "safety-housekeeping-dup": (
        "name: t\nhost: {safety_housekeeping_cpus: [3, 3]}\nvms:\n  a: {}\n",
        2,
        "lists a CPU twice",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=str)
def test_bad_input(case: str) -> None:
    text, line, fragment = BAD[case]
    found = problems(text)
    assert any(
        p.startswith((f"c.yaml:{line} ", f"c.yaml:{line}:")) and fragment in p for p in found
    ), found


def test_all_errors_at_once() -> None:
    found = problems(
        "name: t\nvms:\n  a: {vcpus: 0, cpu: {placement: x}}\n  b: {memory: {size: 1MiB}}\n"
    )
    assert len(found) == 3
    assert [p.split(" ")[0] for p in found] == ["c.yaml:3", "c.yaml:3", "c.yaml:4"]


def test_semantic_errors_all_at_once() -> None:
    found = problems("name: t\nvms:\n  a: {depends_on: [x], networks: [n]}\n  b: {host: h}\n")
    assert len(found) == 3


def test_missing_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_cycle_finder() -> None:
    assert find_cycle({"a": ["b"], "b": []}) is None
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]
    assert find_cycle({"a": ["a"]}) is None  # self-loops are reported separately


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("256MiB", 256 * 1024**2),
        ("1GiB", 1024**3),
        ("2MiB", 2 * 1024**2),
        ("1KB", 1000),
        (512, 512),
        ("0.5GiB", 512 * 1024**2),
    ],
)
def test_parse_size(text: object, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MiB", "-1MiB", "1 parsec", True, 1.5, "0.3B", -5])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_other_units() -> None:
    assert parse_duration("300ms") == pytest.approx(0.3)
    assert parse_duration("2m") == 120 and parse_duration(5) == 5.0
    assert parse_percent("80%") == 80.0 and parse_percent(50) == 50.0
    assert parse_rate("8Mbit/s") == 1_000_000 and parse_rate("1MiB/s") == 1024**2
    assert format_size(256 * 1024**2) == "256MiB" and format_size(1536) == "1536B"
    for bad, fn in (
        ("x", parse_duration),
        ("1 fortnight", parse_duration),
        ("80 per", parse_percent),
        ("1 MB", parse_rate),
    ):
        with pytest.raises(ValueError):
            fn(bad)


def test_shutdown_grace_by_image_and_by_spec() -> None:
    parsed = parse_spec(
        textwrap.dedent(
            """
            name: t
            vms:
              tiny: {}
              deb: {image: {builtin: debian-12}}
              quick: {image: {builtin: debian-12}, shutdown: {timeout: 5s}}
              patient: {shutdown: {timeout: 2m}}
            """
        ),
        "c.yaml",
    )
    grace = {name: vm.shutdown_grace for name, vm in parsed.vms.items()}
    assert grace == {"tiny": 0.0, "deb": 60.0, "quick": 5.0, "patient": 120.0}
    # a spec that does not say keeps the hash it had before shutdown: existed
    assert spec_hash(parse_spec(MINIMAL, "c.yaml")) == spec_hash(
        parse_spec("name: t\nvms:\n  a:\n    shutdown: {}\n", "c.yaml")
    )
