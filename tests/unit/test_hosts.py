"""Multi-host sets: which VMs go to which host, the order hosts are applied,
spec rules across hosts, VMs found on another host than the spec says, and
what kvmctl refuses to half-do on a host it reaches only through libvirt."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmctl.errors import SpecError, UsageError
from kvmctl.host.remote import problems as remote_problems
from kvmctl.observe.status import VmStatus, drift
from kvmctl.planner.hosts import host_groups, is_multi_host, is_remote
from kvmctl.planner.live import LiveDomain, LiveState
from kvmctl.planner.plan import make_plan
from tests.unit.planner_helpers import facts, spec

pytestmark = pytest.mark.unit

TWO_SOCS = """
name: two
hosts:
  soc-a: {uri: "qemu+ssh://soc-a/system"}
  soc-b: {uri: "qemu+tls://soc-b/system", virt_type: qemu}
networks:
  media: {bridge: kvbr-media, subnet: 10.77.2.0/24}
vms:
  cluster: {host: soc-a, criticality: safety, cpu: {placement: dedicated}}
  ivi: {host: soc-b, depends_on: [cluster], networks: [media]}
  passenger: {host: soc-b, networks: [{name: media, bandwidth: {average: 2MB/s}}]}
  local: {}
"""


def test_groups_follow_cross_host_dependencies() -> None:
    s = spec(TWO_SOCS)
    groups = host_groups(s, "qemu:///system")
    assert [(g.name, g.uri, g.vms) for g in groups] == [
        (None, "qemu:///system", ("local",)),
        ("soc-a", "qemu+ssh://soc-a/system", ("cluster",)),
        ("soc-b", "qemu+tls://soc-b/system", ("ivi", "passenger")),
    ]
    assert [g.remote for g in groups] == [False, True, True]
    assert is_multi_host(s)


def test_a_host_others_depend_on_goes_first_whatever_the_spec_order() -> None:
    s = spec(
        """
        name: two
        hosts: {b: {uri: "qemu+ssh://b/system"}, a: {uri: "qemu+ssh://a/system"}}
        vms:
          hud: {host: b, depends_on: [cluster]}
          cluster: {host: a}
        """
    )
    assert [g.name for g in host_groups(s, "qemu:///system")] == ["a", "b"]


def test_one_host_only_on_the_given_connection() -> None:
    s = spec(TWO_SOCS)
    (group,) = host_groups(s, "qemu:///system", only="soc-b")
    assert (group.name, group.uri, group.vms) == ("soc-b", "qemu:///system", ("ivi", "passenger"))
    assert not group.remote
    with pytest.raises(UsageError, match="no host 'soc-c'.*known: soc-a, soc-b"):
        host_groups(s, "qemu:///system", only="soc-c")


def test_a_spec_without_hosts_is_one_group() -> None:
    s = spec("name: one\nvms: {a: {}, b: {}}\n")
    assert [(g.name, g.vms) for g in host_groups(s, "qemu:///system")] == [(None, ("a", "b"))]
    assert not is_multi_host(s)


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("qemu:///system", False),
        ("qemu+unix:///system", False),
        ("qemu+ssh://soc-b/system", True),
        ("qemu+tcp://10.251.0.2:16509/system", True),
        ("qemu+ssh://root@soc-b/system", True),
        ("test:///default", False),
    ],
)
def test_remote_is_a_uri_naming_a_host(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_dependencies_crossing_hosts_both_ways_are_refused() -> None:
    with pytest.raises(SpecError, match="depends_on crosses hosts both ways: "):
        spec(
            """
            name: two
            hosts: {a: {uri: "qemu+ssh://a/system"}, b: {uri: "qemu+ssh://b/system"}}
            vms:
              x: {host: a, depends_on: [y]}
              y: {host: b, depends_on: [z]}
              z: {host: a}
            """
        )


def test_two_host_names_for_one_uri_are_refused() -> None:
    with pytest.raises(SpecError, match=r"hosts\.b\.uri.*already host 'a'"):
        spec(
            """
            name: two
            hosts: {a: {uri: "qemu+ssh://a/system"}, b: {uri: "qemu+ssh://a/system/"}}
            vms: {x: {host: a}, y: {host: b}}
            """
        )


def test_virt_type_of_a_host_must_be_kvm_or_qemu() -> None:
    with pytest.raises(SpecError, match=r"hosts\.a\.virt_type"):
        spec('name: t\nhosts: {a: {uri: "qemu+ssh://a/system", virt_type: xen}}\nvms: {x: {}}\n')


def _running(vm: str, cpus: frozenset[int] = frozenset()) -> LiveDomain:
    return LiveDomain(name=f"two-{vm}", active=True, set_name="two", vm=vm, dedicated_cpus=cpus)


def test_a_vm_moved_here_is_left_alone_and_keeps_its_cpu() -> None:
    """cluster (spec: soc-a) was migrated to soc-b: soc-b's plan neither deletes
    it nor hands out its dedicated CPU; a VM no longer in the spec is deleted."""
    s = spec(
        TWO_SOCS.replace("ivi: {host: soc-b,", "ivi: {host: soc-b, cpu: {placement: dedicated},")
    )
    gone = LiveDomain(name="two-old", active=True, set_name="two", vm="old")
    live = LiveState((_running("cluster", frozenset({1})), gone))
    plan = make_plan(s, facts(cpus=3), live, host="soc-b")
    assert plan.strays == ("cluster",)
    assert [(a.vm, a.kind) for a in plan.actions if a.kind == "delete"] == [("old", "delete")]
    assert "cluster" not in {a.vm for a in plan.actions}
    assert plan.vms["ivi"].placement.cpus == frozenset({2})
    assert any(
        "VM 'cluster' runs here but the spec places it with host 'soc-a'" in n for n in plan.notes
    )


def test_a_whole_set_plan_still_replaces_its_own_vms() -> None:
    s = spec("name: two\nvms: {a: {cpu: {placement: dedicated}}}\n")
    plan = make_plan(s, facts(cpus=2), LiveState((_running("a", frozenset({1})),)))
    assert plan.problems == [] and plan.vms["a"].placement.cpus == frozenset({1})


def test_remote_host_problems_name_what_only_kvmctl_there_can_do() -> None:
    s = spec(TWO_SOCS)
    plan = make_plan(s, facts(cpus=2), LiveState(), host="soc-b")
    found = remote_problems(plan, "soc-b", "qemu+tls://soc-b/system")
    assert found == [
        "bridge 'kvbr-media' of network 'media' is missing on soc-b: kvmctl makes bridges only "
        "on the machine it runs on; run `kvmctl apply SPEC --host soc-b` on soc-b (the Ansible "
        "cockpit role does)",
        "VM 'passenger' has NIC bandwidth limits, shaped with tc on the host itself; run "
        "`kvmctl apply SPEC --host soc-b` on soc-b (the Ansible cockpit role does)",
    ]
    there = LiveState(bridges={"kvbr-media": "kvmctl:two:media"})
    plan = make_plan(s, facts(cpus=2), there, host="soc-b")
    assert len(remote_problems(plan, "soc-b", "qemu+tls://soc-b/system")) == 1


def test_channels_on_a_remote_host_need_kvmctl_there() -> None:
    s = spec(
        "name: ch\nhosts: {soc-b: {uri: qemu+tls://soc-b/system}}\n"
        "vms:\n  a: {host: soc-b}\n  b: {host: soc-b}\n  c: {host: soc-b}\n"
        "channels:\n  - {kind: shm, name: v, size: 1MiB, members: [a, b]}\n"
    )
    plan = make_plan(s, facts(cpus=2), LiveState(), host="soc-b")
    found = remote_problems(plan, "soc-b", "qemu+tls://soc-b/system")
    assert [p.split(" has ")[0] for p in found] == ["VM 'a'", "VM 'b'"]
    assert all("region files and sockets kvmctl prepares on the host itself" in p for p in found)


def test_unknown_hugepages_are_not_drift() -> None:
    """A remote host's hugepages are not visible through libvirt: unknown, not wrong."""
    s = spec("name: t\nvms: {a: {memory: {size: 256MiB, hugepages: 2MiB}}}\n")
    plan = make_plan(s, facts(cpus=2)).vms["a"]
    st = VmStatus(
        vm="a",
        domain=plan.domain,
        state="running",
        vcpus_planned=["0"],
        vcpus_actual=["0"],
        emulator_planned="0",
        emulator_actual="0",
        hugepages_planned_kib=256 * 1024,
        hugepages_actual_kib=None,
        shares=plan.shares,
        quota_us=-1,
    )
    assert drift(plan, st) == []
    st.hugepages_actual_kib = 0
    assert drift(plan, st) == ["hugepages 0 KiB != planned 262144 KiB"]


def test_remote_kvm_verdicts_are_kept_ten_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmctl.host import remote

    cache = tmp_path / "remote-kvm.json"
    assert remote._cached(cache, "uuid-a") is None
    remote._store(cache, "uuid-a", ("qemu", "a probe guest failed"))
    remote._store(cache, "uuid-b", ("kvm", "reached user space"))
    virt_type, reason = remote._cached(cache, "uuid-a") or ("", "")
    assert virt_type == "qemu" and reason.startswith("a probe guest failed (probed ")
    assert (remote._cached(cache, "uuid-b") or ("",))[0] == "kvm"
    later = remote.time.time() + remote.PROBE_TTL_S + 1
    monkeypatch.setattr(remote.time, "time", lambda: later)
    assert remote._cached(cache, "uuid-a") is None
    cache.write_text("not json")
    assert remote._cached(cache, "uuid-a") is None


def test_vms_without_host_may_not_land_on_a_named_hosts_libvirt() -> None:
    s = spec(
        """
        name: two
        hosts: {soc-a: {uri: "qemu:///system"}}
        vms: {x: {host: soc-a}, y: {}}
        """
    )
    with pytest.raises(UsageError, match=r"without host: \(y\) would run on qemu:///system/, "):
        host_groups(s, "qemu:///system/")
    assert [g.name for g in host_groups(s, "qemu+ssh://other/system")] == [None, "soc-a"]
