"""htb parameters from spec bandwidth limits (pure)."""

from __future__ import annotations

import pytest

from kvmctl.adapters.netlink.shaping import HtbClass, Limit, htb_class
from kvmctl.errors import UsageError
from kvmctl.spec.networks import Bandwidth, BandwidthLimit

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        # average only: ceil = rate, 20 ms of data as burst, the ceil bucket as big
        (Limit(1_000_000), HtbClass(1_000_000, 1_000_000, 20_000, 20_000, 100_000)),
        # tiny rate: bursts never below a few frames, quantum never below one
        (Limit(10_000), HtbClass(10_000, 10_000, 6056, 6056, 1514)),
        # fast: quantum capped where the kernel stops warning
        (Limit(125_000_000), HtbClass(125_000_000, 125_000_000, 2_500_000, 2_500_000, 200_000)),
        # peak: bursts drain at peak through a small ceil bucket
        (
            Limit(1_000_000, peak=4_000_000, burst=64_000),
            HtbClass(1_000_000, 4_000_000, 64_000, 4_000, 100_000),
        ),
        # a burst smaller than one frame could never send a full frame
        (Limit(1_000_000, burst=100), HtbClass(1_000_000, 1_000_000, 1514, 1514, 100_000)),
    ],
)
def test_htb_class(limit: Limit, expected: HtbClass) -> None:
    assert htb_class(limit) == expected


def test_peak_below_average_is_refused() -> None:
    with pytest.raises(UsageError, match="peak 500 is below the average 1000"):
        htb_class(Limit(1000, peak=500))


def test_non_positive_average_is_refused() -> None:
    with pytest.raises(UsageError, match="must be positive"):
        htb_class(Limit(0))


def test_spec_limits_fit_directly() -> None:
    """The spec's BandwidthLimit is accepted as is, per direction seen from the guest."""
    bandwidth = Bandwidth.model_validate({"in": {"average": "2MB/s"}, "out": {"average": 1000}})
    inbound, outbound = bandwidth.limits()
    assert isinstance(inbound, BandwidthLimit) and isinstance(outbound, BandwidthLimit)
    assert htb_class(inbound).rate == inbound.average
    assert htb_class(outbound).rate == 1000
