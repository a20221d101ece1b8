"""Heartbeat and safe_state in the spec: good input loads, every bad input is
an error naming its field (exit 2), and specs without them hash as before."""

from __future__ import annotations

import pytest

from kvmctl.errors import SpecError
from kvmctl.host.facts import HostFacts
from kvmctl.planner.channels import SERIAL_PORT_PREFIX, plan_channels
from kvmctl.spec import parse_spec, spec_hash

pytestmark = pytest.mark.unit

GOOD = """\
name: t
vms:
  cluster: {criticality: safety, heartbeat: {period: 200ms, deadline: 1s}}
  ivi: {}
safe_state:
  shed: [ivi]
  heartbeat_missed: [pause, restart]
  crashed: [pause]
  gave_up: []
"""


def problems(text: str) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(text, "c.yaml")
    assert err.value.exit_code == 2
    return [p.split(" ", 1)[1] for p in err.value.problems]  # without "c.yaml:N"


def test_good_spec_loads() -> None:
    spec = parse_spec(GOOD)
    beat = spec.vms["cluster"].heartbeat
    assert beat is not None and (beat.period, beat.deadline) == (0.2, 1.0)
    safe = spec.safe_state
    assert safe is not None and safe.shed == ["ivi"] and safe.actions("gave_up") == []
    assert safe.actions("crashed") == ["pause"] and safe.watch is None


def test_without_them_the_hash_is_unchanged() -> None:
    plain = parse_spec("name: t\nvms:\n  a: {}\n")
    dumped = plain.model_dump()
    assert "safe_state" not in dumped and "heartbeat" not in dumped["vms"]["a"]
    assert spec_hash(parse_spec(GOOD)) != spec_hash(parse_spec(GOOD.replace("1s", "2s")))


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("deadline: 1s", "deadline: 200ms"),
            "vms.cluster.heartbeat.deadline: 0.2 s is not longer than the period "
            "(0.2 s): every beat would be late",
        ),
        (
            ("deadline: 1s", "deadline: 100ms"),
            "vms.cluster.heartbeat.deadline: 0.1 s is not longer than the period "
            "(0.2 s): every beat would be late",
        ),
        (
            ("period: 200ms", "period: 1ms"),
            "vms.cluster.heartbeat.period: must be at least 10ms",
        ),
        (
            ("shed: [ivi]", "shed: [nope]"),
            "safe_state.shed[0]: unknown VM 'nope' (known: cluster, ivi)",
        ),
        (
            ("shed: [ivi]", "shed: [ivi, cluster]"),
            "safe_state.shed[1]: VM 'cluster' is watched: the safe state never pauses or caps it",
        ),
        (
            ("  gave_up: []\n", "  watch: [cluster, ghost]\n"),
            "safe_state.watch[1]: unknown VM 'ghost' (known: cluster, ivi)",
        ),
        (
            ("crashed: [pause]", "crashed: [restart]"),
            "safe_state.crashed: restart is for heartbeat_missed only: its restart policy "
            "(vms.<name>.restart) restarts a crashed VM",
        ),
        (
            ("gave_up: []", "gave_up: [restart]"),
            "safe_state.gave_up: restart is for heartbeat_missed only: the restart budget is "
            "spent: restarting anyway would defeat restart.max",
        ),
        (
            ("crashed: [pause]", "crashed: [cap]"),
            "safe_state.cap: the cap action needs cap (a CPU limit, like '20%')",
        ),
        (
            ("shed: [ivi]", "shed: [ivi]\n  cap: 20%"),
            "safe_state.cap: no trigger lists the cap action",
        ),
        (
            ("crashed: [pause]", "crashed: [pause, cap]"),
            "safe_state.crashed: pause and cap both free CPU: give one",
        ),
        (
            ("crashed: [pause]", "crashed: [pause, pause]"),
            "safe_state.crashed: lists an action twice",
        ),
        (
            ("crashed: [pause]", "crashed: [reboot]"),
            "safe_state.crashed[0]: must be 'pause', 'cap' or 'restart' (got 'reboot')",
        ),
    ],
)
def test_bad_input_names_the_field(change: tuple[str, str], expected: str) -> None:
    assert problems(GOOD.replace(*change)) == [expected]


def test_nothing_to_watch() -> None:
    text = GOOD.replace("criticality: safety, ", "").replace(
        "  heartbeat_missed: [pause, restart]\n", ""
    )
    assert problems(text) == [
        "vms.cluster.heartbeat: a missed heartbeat of VM 'cluster' would change nothing: "
        "declare safe_state with heartbeat_missed, watching this VM (criticality: safety, or "
        "safe_state.watch)",
        "safe_state.watch: no VM to watch: list them under watch, or give a VM criticality: safety",
    ]


def test_heartbeat_without_a_safe_state() -> None:
    text = "name: t\nvms:\n  a: {heartbeat: {period: 1s, deadline: 3s}}\n"
    assert problems(text) == [
        "vms.a.heartbeat: a missed heartbeat of VM 'a' would change nothing: declare "
        "safe_state with heartbeat_missed, watching this VM (criticality: safety, or "
        "safe_state.watch)"
    ]


def test_heartbeat_missed_without_a_heartbeat() -> None:
    text = GOOD.replace(", heartbeat: {period: 200ms, deadline: 1s}", "")
    assert problems(text) == [
        "safe_state.heartbeat_missed: no watched VM has a heartbeat (vms.<name>.heartbeat: "
        "{period, deadline})"
    ]


def test_pause_without_shed_vms() -> None:
    text = GOOD.replace("  shed: [ivi]\n", "")
    assert problems(text) == [
        "safe_state.heartbeat_missed: pause and cap act on the VMs under shed, which lists none",
        "safe_state.crashed: pause and cap act on the VMs under shed, which lists none",
    ]


def test_shed_safety_vm_and_other_host() -> None:
    text = GOOD.replace("  ivi: {}\n", "  ivi: {}\n  adas: {criticality: safety}\n").replace(
        "  cluster: {", "  cluster: {host: b, "
    )
    text = "hosts:\n  b: {uri: 'qemu+ssh://b/system'}\n" + text
    text = text.replace("safe_state:\n", "safe_state:\n  watch: [cluster]\n")
    text = text.replace("shed: [ivi]", "shed: [ivi, adas]")
    assert problems(text) == [
        "safe_state.shed[0]: VM 'ivi' runs on (no host:), no watched VM does: the supervisor "
        "of a host acts on that host's VMs only",
        "safe_state.shed[1]: VM 'adas' is a safety VM: the safe state never pauses or caps it",
    ]


def test_cap_of_a_dedicated_vm() -> None:
    text = GOOD.replace("  ivi: {}", "  ivi: {cpu: {placement: dedicated}}").replace(
        "crashed: [pause]", "crashed: [cap]\n  cap: 20%"
    )
    assert problems(text) == [
        "safe_state.shed[0]: VM 'ivi' has dedicated CPUs, which are not capped: pause it instead"
    ]


def test_own_heartbeat_channel_name_is_refused() -> None:
    text = GOOD + "channels:\n  - {kind: serial, name: heartbeat, vm: cluster}\n"
    assert problems(text) == [
        "channels[0].name: VM 'cluster' has a heartbeat, which kvmctl carries over a serial "
        "channel named 'heartbeat' of its own: name this one differently"
    ]


def test_heartbeat_is_planned_as_a_serial_channel() -> None:
    spec = parse_spec(GOOD)
    plan = plan_channels(spec, {"cluster", "ivi"}, "/run/kvmctl/channels", HostFacts())
    [port] = plan.serials
    assert (port.channel, port.vm, port.port) == ("heartbeat", "cluster", "org.kvmctl.heartbeat")
    assert port.port.startswith(SERIAL_PORT_PREFIX)
    assert port.socket == "/run/kvmctl/channels/t.cluster.heartbeat.sock"
    assert plan_channels(spec, {"ivi"}, "/x", HostFacts()).serials == ()
