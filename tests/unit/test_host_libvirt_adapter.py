"""kvmctl.adapters.libvirt without a daemon: pure helpers, error mapping, and libvirt's
own in-process test driver (test:///default), which needs no libvirtd and no host access.
Booting probe guests needs a real libvirtd: tests/integration/test_doctor.py."""

from __future__ import annotations

import pytest

from kvmctl.adapters import libvirt as lv
from kvmctl.errors import HostError, UsageError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("number", "text"),
    [(9000000, "9.0.0"), (7002022, "7.2.22"), (10010003, "10.10.3"), (2, "0.0.2")],
)
def test_format_version(number: int, text: str) -> None:
    assert lv.format_version(number) == text


def test_library_version_is_dotted() -> None:
    assert lv.library_version().count(".") == 2


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        (None, False),
        ("", False),
        ("qemu:///system", False),
        ("qemu+unix:///system?socket=/x/sock", False),
        ("test:///default", False),
        ("qemu+ssh://soc-b/system", True),
        ("qemu+tcp://10.0.0.2:16509/system", True),
    ],
)
def test_is_remote_uri(uri: str | None, remote: bool) -> None:
    assert lv.is_remote_uri(uri) is remote


@pytest.mark.parametrize("uri", ["qemu:///sys tem", "bogus://", "not a uri", "qemu:///embed"])
def test_malformed_or_unknown_uris_are_usage_errors(uri: str) -> None:
    with pytest.raises(UsageError, match="is not a valid libvirt URI") as info:
        lv.connect(uri)
    assert uri in str(info.value)
    assert "\n" not in str(info.value)


def test_unreachable_daemon_is_a_host_error() -> None:
    uri = "qemu+unix:///system?socket=/nonexistent/kvmctl-test.sock"
    with pytest.raises(HostError) as info:
        lv.connect(uri)
    message = str(info.value)
    assert message.startswith(f"cannot reach libvirt at {uri} (Failed to connect socket")
    assert "/nonexistent/kvmctl-test.sock" in message
    assert "is libvirtd running on this host?" in message and "libvirtd -d" in message
    assert "\n" not in message and info.value.reasons == []


def test_test_driver_versions_and_capabilities() -> None:
    with lv.connect("test:///default") as conn:
        assert conn.uri == "test:///default"
        versions = conn.versions()
        assert versions.library == lv.library_version()
        assert versions.hypervisor == "0.0.2"
        assert "<capabilities>" in conn.capabilities_xml()
        assert conn.hostname()


@pytest.mark.parametrize(
    ("reported", "quota"),
    [(None, None), (-1, -1), (50_000, 50_000), (18446744073709551, -1)],
)
def test_unlimited_quota_reads_as_minus_one(reported: int | None, quota: int | None) -> None:
    """cgroup v2: libvirt reports an unlimited vcpu_quota as ULLONG_MAX / 1000."""
    from kvmctl.adapters.virt import _quota

    assert _quota(reported) == quota
