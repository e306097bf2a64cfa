"""Engine calls that address one named license: ``checkout_on`` and ``record_usage(license_id=)``.

The Cryptolens-compatible API names one license by its key, so its seats and usage
must never spill over to another installed license offering the same feature or
meter, its lease length is the client's interval, and its overdraft is capped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import LicenseExpired, NoSeatAvailable, QuotaExceeded, UnknownFeature
from meterbox.server._core.engine import Engine
from meterbox.server._core.policy import (
    MAX_REQUESTED_LEASE_SECONDS,
    FeaturePolicy,
    LicensePolicy,
    MeterPolicy,
)
from meterbox.server._errors import UnknownMeter

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def counter_rng() -> Callable[[int], bytes]:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def lic(license_id: str, *, expires: datetime | None = None) -> LicensePolicy:
    return LicensePolicy(
        license_id=license_id,
        customer="acme",
        product="cad",
        issued=T0 - timedelta(days=1),
        expires=expires,
        features={"cad": FeaturePolicy(seats=1, overdraft=2, lease_seconds=60)},
        meters={"runs": MeterPolicy(limit=10)},
    )


def engine(*licenses: LicensePolicy) -> Engine:
    return Engine(licenses, init_time=T0 - timedelta(days=1), rng=counter_rng())


def test_seats_come_only_from_the_named_license() -> None:
    # "A" sorts first, so the general checkout would use its seat; the named one must not.
    e = engine(lic("A"), lic("B"))
    first = e.checkout_on("B", "cad", "m1", T0, overdraft_cap=0)
    assert (first.lease.license_id, first.lease.overdraft) == ("B", False)
    with pytest.raises(NoSeatAvailable):
        e.checkout_on("B", "cad", "m2", T0, overdraft_cap=0)
    assert e.checkout("cad", "m2", T0).lease.license_id == "A"


def test_overdraft_cap_lowers_but_never_raises_the_licenses_overdraft() -> None:
    e = engine(lic("A"))
    assert not e.checkout_on("A", "cad", "m1", T0, overdraft_cap=5).lease.overdraft
    assert e.checkout_on("A", "cad", "m2", T0, overdraft_cap=5).lease.overdraft
    assert e.checkout_on("A", "cad", "m3", T0, overdraft_cap=5).lease.overdraft
    with pytest.raises(NoSeatAvailable):
        e.checkout_on("A", "cad", "m4", T0, overdraft_cap=5)
    e2 = engine(lic("A"))
    e2.checkout_on("A", "cad", "m1", T0, overdraft_cap=1)
    e2.checkout_on("A", "cad", "m2", T0, overdraft_cap=1)
    with pytest.raises(NoSeatAvailable):
        e2.checkout_on("A", "cad", "m3", T0, overdraft_cap=1)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=-10, max_value=2 * MAX_REQUESTED_LEASE_SECONDS))
def test_lease_length_is_the_callers_interval_clamped_to_the_engine_range(seconds: int) -> None:
    e = engine(lic("A"))
    lease = e.checkout_on("A", "cad", "m1", T0, lease_seconds=seconds).lease
    expected = 60 if seconds == 0 else min(max(seconds, 1), MAX_REQUESTED_LEASE_SECONDS)
    assert lease.lease_seconds == expected
    assert lease.expires_at - T0 == timedelta(seconds=expected)


def test_a_live_lease_of_the_same_machine_renews_with_the_new_interval() -> None:
    e = engine(lic("A"))
    first = e.checkout_on("A", "cad", "m1", T0, lease_seconds=100)
    later = T0 + timedelta(seconds=90)
    again = e.checkout_on("A", "cad", "m1", later, lease_seconds=300)
    assert again.renewed
    assert again.lease.lease_id == first.lease.lease_id
    assert again.lease.expires_at == later + timedelta(seconds=300)
    # Undo restores the lease exactly as it was, lease length included.
    assert again.previous == first.lease
    e.undo_seat(again)
    assert e.seats.leases[first.lease.lease_id] == first.lease


def test_an_expired_or_unknown_license_grants_no_seat() -> None:
    e = engine(lic("A", expires=T0), lic("B"))
    with pytest.raises(LicenseExpired):
        e.checkout_on("A", "cad", "m1", T0)
    with pytest.raises(UnknownFeature):
        e.checkout_on("C", "cad", "m1", T0)


def test_usage_is_charged_and_given_back_on_the_named_license_only() -> None:
    e = engine(lic("A"), lic("B"))
    d = e.record_usage("runs", 4, "c", None, T0, license_id="B")
    assert (d.result.license_id, d.result.used) == ("B", 4)
    with pytest.raises(QuotaExceeded):
        e.record_usage("runs", 7, "c", None, T0, license_id="B")
    back = e.record_usage("runs", 1, "c", None, T0, decrement=True, license_id="B")
    assert (back.result.license_id, back.result.used, back.delta) == ("B", 3, -1)
    assert e.meters.used("A", "runs", "total") == 0


def test_usage_on_a_blocked_or_unknown_license_is_refused() -> None:
    e = engine(lic("A", expires=T0), lic("B"))
    with pytest.raises(LicenseExpired):
        e.record_usage("runs", 1, "c", None, T0, license_id="A")
    with pytest.raises(UnknownMeter):
        e.record_usage("runs", 1, "c", None, T0, license_id="C")
    assert e.meters.usage == {}
