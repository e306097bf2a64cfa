"""Seats: leases with expiry, renewal instead of a second seat, overdraft, denials, deadlines."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import LicenseExpired, NoSeatAvailable, ReportOverdue, UnknownFeature
from meterbox.server._core.engine import Engine, ReceiptInfo
from meterbox.server._core.policy import FeaturePolicy, LicensePolicy
from meterbox.server._errors import LeaseNotFound

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def counter_rng() -> object:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def lic(
    license_id: str = "L1",
    seats: int = 2,
    overdraft: int = 0,
    lease: int = 60,
    expires: datetime | None = None,
    report_every_days: int | None = None,
    grace_days: int = 0,
) -> LicensePolicy:
    return LicensePolicy(
        license_id=license_id,
        customer="acme",
        product="cad",
        issued=T0 - timedelta(days=1),
        expires=expires,
        features={"cad": FeaturePolicy(seats=seats, overdraft=overdraft, lease_seconds=lease)},
        report_every_days=report_every_days,
        grace_days=grace_days,
    )


def engine(*licenses: LicensePolicy) -> Engine:
    return Engine(licenses or (lic(),), init_time=T0, rng=counter_rng())  # type: ignore[arg-type]


def test_lease_expires_after_its_length_and_frees_the_seat() -> None:
    e = engine(lic(seats=1))
    d = e.checkout("cad", "a", T0)
    assert d.lease.expires_at == T0 + timedelta(seconds=60)
    with pytest.raises(NoSeatAvailable):
        e.checkout("cad", "b", T0 + timedelta(seconds=59))
    assert [x.lease_id for x in e.expire(T0 + timedelta(seconds=60))] == [d.lease.lease_id]
    assert e.checkout("cad", "b", T0 + timedelta(seconds=60)).lease.client_id == "b"


def test_second_checkout_by_same_client_renews_instead_of_taking_a_seat() -> None:
    e = engine(lic(seats=2))
    first = e.checkout("cad", "a", T0)
    again = e.checkout("cad", "a", T0 + timedelta(seconds=40))
    assert again.renewed and again.lease.lease_id == first.lease.lease_id
    assert again.lease.expires_at == T0 + timedelta(seconds=100)
    assert len(e.seats.live("cad", T0 + timedelta(seconds=41))) == 1


def test_overdraft_seat_is_granted_and_flagged_then_denied() -> None:
    e = engine(lic(seats=1, overdraft=1))
    assert not e.checkout("cad", "a", T0).lease.overdraft
    assert e.checkout("cad", "b", T0).lease.overdraft
    with pytest.raises(NoSeatAvailable) as err:
        e.checkout("cad", "c", T0)
    msg = str(err.value)
    assert "1 seats and 1 overdraft" in msg and "all 2 held" in msg
    assert (T0 + timedelta(seconds=60)).isoformat() in msg


def test_denials_are_counted_per_feature() -> None:
    e = engine(lic(seats=0))
    for client in ("a", "b", "c"):
        with pytest.raises(NoSeatAvailable):
            e.checkout("cad", client, T0)
    assert e.seats.denials == {"cad": 3}
    assert e.seats_view(T0)[0]["denials"] == 3


def test_heartbeat_renews_and_coalesces_ledger_records() -> None:
    e = engine(lic(lease=60))
    lease = e.checkout("cad", "a", T0).lease
    early = e.heartbeat(lease.lease_id, T0 + timedelta(seconds=20))
    assert early.lease.expires_at == T0 + timedelta(seconds=80)
    assert not early.record  # 20 s < half of 60 s since the checkout record
    late = e.heartbeat(lease.lease_id, T0 + timedelta(seconds=31))
    assert late.record and late.lease.recorded_at == T0 + timedelta(seconds=31)
    assert not e.heartbeat(lease.lease_id, T0 + timedelta(seconds=50)).record


def test_heartbeat_after_expiry_or_release_is_lease_not_found() -> None:
    e = engine()
    lease = e.checkout("cad", "a", T0).lease
    with pytest.raises(LeaseNotFound):
        e.heartbeat(lease.lease_id, T0 + timedelta(seconds=60))
    other = e.checkout("cad", "b", T0).lease
    assert e.release(other.lease_id) is not None
    assert e.release(other.lease_id) is None  # idempotent
    with pytest.raises(LeaseNotFound):
        e.heartbeat(other.lease_id, T0)


def test_unknown_feature_lists_the_known_ones() -> None:
    with pytest.raises(UnknownFeature, match="one of: cad"):
        engine().checkout("cam", "a", T0)


def test_seats_add_up_across_licenses_earliest_expiry_first() -> None:
    late = lic("B", seats=1, expires=T0 + timedelta(days=30))
    soon = lic("A", seats=1, expires=T0 + timedelta(days=10))
    e = engine(late, soon)
    assert e.checkout("cad", "a", T0).lease.license_id == "A"
    assert e.checkout("cad", "b", T0).lease.license_id == "B"
    with pytest.raises(NoSeatAvailable, match="2 seats"):
        e.checkout("cad", "c", T0)


def test_denial_belongs_to_the_first_license_offering_the_feature() -> None:
    # Regression: denials carried no license and were billed to whichever license the
    # report happened to name first, i.e. to another customer.
    e = engine(lic("B", seats=0, expires=T0 + timedelta(days=30)), lic("A", seats=0))
    with pytest.raises(NoSeatAvailable) as denied:
        e.checkout("cad", "a", T0)
    assert denied.value.license_id == "B"
    with pytest.raises(NoSeatAvailable) as named:
        e.checkout_on("A", "cad", "a", T0)
    assert named.value.license_id == "A"


def test_expired_license_grants_no_seat_and_no_renewal() -> None:
    e = engine(lic(expires=T0 + timedelta(hours=1)))
    lease = e.checkout("cad", "a", T0 + timedelta(minutes=59, seconds=30)).lease
    with pytest.raises(LicenseExpired, match="expired at"):
        e.checkout("cad", "b", T0 + timedelta(hours=1))
    with pytest.raises(LicenseExpired):
        e.heartbeat(lease.lease_id, T0 + timedelta(hours=1))
    # The existing lease runs out normally.
    assert e.seats.live("cad", T0 + timedelta(hours=1)) == [lease]


def test_report_overdue_blocks_new_seats_until_a_receipt_arrives() -> None:
    # The first deadline runs from the license's issue time (T0 - 1 day), not from
    # the engine's initialisation (T0): 30 days + 5 days grace end on day 34 after T0.
    e = engine(lic(report_every_days=30, grace_days=5))
    e.checkout("cad", "a", T0 + timedelta(days=34))  # the deadline itself is still usable
    with pytest.raises(ReportOverdue) as err:
        e.checkout("cad", "b", T0 + timedelta(days=34, seconds=1))
    msg = str(err.value)
    assert (T0 + timedelta(days=34)).isoformat() in msg and "import the receipt" in msg
    e.import_receipt(ReceiptInfo(vendor_time=T0 + timedelta(days=34), seq=10))
    assert e.checkout("cad", "b", T0 + timedelta(days=34, seconds=1)).lease.client_id == "b"


def test_a_later_initialisation_does_not_move_the_first_deadline() -> None:
    # A server initialised (or whose state was deleted) long after the license was
    # issued gets no fresh report interval: the deadline is the license's.
    late = Engine((lic(report_every_days=30, grace_days=5),), init_time=T0 + timedelta(days=30))
    with pytest.raises(ReportOverdue):
        late.checkout("cad", "a", T0 + timedelta(days=34, seconds=1))


def test_hourly_peak_tracks_the_most_seats_held() -> None:
    e = engine(lic(seats=3))
    for c in "abc":
        e.checkout("cad", c, T0)
    e.expire(T0 + timedelta(seconds=60))
    e.checkout("cad", "d", T0 + timedelta(seconds=61))
    assert e.seats.peaks[("cad", T0)] == 3


ops = st.lists(
    st.tuples(
        st.sampled_from(["checkout", "release", "expire", "heartbeat"]),
        st.integers(0, 6),
        st.integers(0, 90),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, seats=st.integers(0, 3), overdraft=st.integers(0, 2))
def test_live_leases_never_exceed_seats_plus_overdraft(
    ops: list[tuple[str, int, int]], seats: int, overdraft: int
) -> None:
    e = engine(lic(seats=seats, overdraft=overdraft, lease=60))
    now = T0
    for op, client, step in ops:
        now += timedelta(seconds=step)
        ids = sorted(e.seats.leases)
        try:
            if op == "checkout":
                e.checkout("cad", f"c{client}", now)
            elif op == "release" and ids:
                e.release(ids[client % len(ids)])
            elif op == "heartbeat" and ids:
                e.heartbeat(ids[client % len(ids)], now)
            elif op == "expire":
                e.expire(now)
        except (NoSeatAvailable, LeaseNotFound):
            pass
        live = e.seats.live("cad", now)
        assert sum(not x.overdraft for x in live) <= seats
        assert sum(x.overdraft for x in live) <= overdraft
        assert len({x.client_id for x in live}) == len(live)
