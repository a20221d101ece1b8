"""kvmctl.observe.exporter without a host: --listen parsing, what a listen failure
says, and a scrape that cannot read the set."""

from __future__ import annotations

import errno
import socket
from types import SimpleNamespace
from typing import Any

import pytest

from kvmctl.errors import HostError, UsageError
from kvmctl.observe import metrics
from kvmctl.observe.exporter import CockpitCollector, _listen_error, parse_listen

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:9477", ("127.0.0.1", 9477)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9477", ("::1", 9477)),
        ("[::]:80", ("::", 80)),
        (" 127.0.0.1:9477 ", ("127.0.0.1", 9477)),
    ],
)
def test_listen_accepted(text: str, want: tuple[str, int]) -> None:
    assert parse_listen(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "",
        "9477",
        ":9477",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "::1:9477",
        "[::1]9477",
        "host name:9477",
        "a;b:9477",
        "http://127.0.0.1:9477",
    ],
)
def test_listen_refused(text: str) -> None:
    with pytest.raises(UsageError, match="not HOST:PORT"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("err", "kind", "words"),
    [
        (OSError(errno.EADDRINUSE, "Address already in use"), HostError, "in use"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign"), HostError, "no interface"),
        (OSError(errno.EACCES, "Permission denied"), HostError, "below 1024"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), UsageError, "unknown"),
        (OSError(errno.EPERM, "Operation not permitted"), HostError, "not permitted"),
    ],
)
def test_listen_errors_name_the_address(err: OSError, kind: type, words: str) -> None:
    got = _listen_error("127.0.0.1", 9477, err)
    assert isinstance(got, kind)
    assert "127.0.0.1:9477" in str(got) and words in str(got)
    assert "[::1]:80" in str(_listen_error("::1", 80, err))


class _Broken(CockpitCollector):
    def __init__(self) -> None:
        super().__init__(SimpleNamespace(spec=SimpleNamespace(name="s")))  # type: ignore[arg-type]
        self.calls = 0

    def scrape(self) -> metrics.Scrape:
        self.calls += 1
        if self.calls == 2:
            return metrics.Scrape("s", [])
        raise RuntimeError("libvirtd is gone")


def _values(fams: list[Any]) -> dict[str, float]:
    return {s.name: s.value for f in fams for s in f.samples}


def test_a_scrape_that_fails_reports_down_and_says_so_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    c = _Broken()
    first = list(c.collect())
    assert _values(first)["kvmctl_up"] == 0.0
    assert {f.name for f in first} == {f.name for f in metrics.failed("s", 0)}
    assert _values(list(c.collect()))["kvmctl_up"] == 1.0
    list(c.collect())
    list(c.collect())
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "kvmctl: cannot read cockpit 's': libvirtd is gone",
        "kvmctl: reading the cockpit works again",
        "kvmctl: cannot read cockpit 's': libvirtd is gone",
    ]
