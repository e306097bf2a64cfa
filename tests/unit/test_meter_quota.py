"""Meters: prepaid limits, over-limit policies, monthly periods, top-ups, idempotency."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import QuotaExceeded, ReportOverdue
from meterbox.server._core.engine import Engine
from meterbox.server._core.policy import LicensePolicy, MeterPolicy
from meterbox.server._errors import IdempotencyConflictError, TopupAlreadyAppliedError, UnknownMeter

T0 = datetime(2025, 3, 31, 23, 0, tzinfo=UTC)


def lic(
    license_id: str = "L1",
    limit: int | None = 10,
    period: str = "total",
    over: str = "refuse",
    expires: datetime | None = None,
    report_every_days: int | None = None,
) -> LicensePolicy:
    return LicensePolicy(
        license_id=license_id,
        customer="acme",
        product="solver",
        issued=T0 - timedelta(days=1),
        expires=expires,
        meters={"runs": MeterPolicy(limit=limit, period=period, over_limit=over)},  # type: ignore[arg-type]
        report_every_days=report_every_days,
    )


def engine(*licenses: LicensePolicy) -> Engine:
    return Engine(licenses or (lic(),), init_time=T0)


def test_usage_past_the_limit_is_refused_with_limit_used_and_requested() -> None:
    e = engine()
    assert e.record_usage("runs", 8, "a", None, T0).result.remaining == 2
    with pytest.raises(QuotaExceeded) as err:
        e.record_usage("runs", 3, "a", None, T0)
    msg = str(err.value)
    assert "limit 10" in msg and "used 8" in msg and "requested 3" in msg and "top-up" in msg
    assert e.meters.used("L1", "runs", "total") == 8


def test_allow_policy_goes_over_and_flags() -> None:
    e = engine(lic(limit=5, over="allow"))
    assert not e.record_usage("runs", 5, "a", None, T0).result.flagged
    r = e.record_usage("runs", 2, "a", None, T0).result
    assert r.flagged and r.used == 7 and r.remaining == 0
    assert r.payload()["f"] == 1


def test_monthly_period_rolls_over_at_utc_month_start() -> None:
    e = engine(lic(limit=5, period="month"))
    e.record_usage("runs", 5, "a", None, T0)
    with pytest.raises(QuotaExceeded):
        e.record_usage("runs", 1, "a", None, T0 + timedelta(minutes=59))
    april = e.record_usage("runs", 1, "a", None, T0 + timedelta(hours=1)).result
    assert april.period == "2025-04" and april.used == 1
    assert e.balances(T0 + timedelta(hours=1))[0]["period_start"] == "2025-04-01T00:00:00+00:00"


def test_topup_raises_the_limit_once() -> None:
    e = engine(lic(limit=2))
    e.record_usage("runs", 2, "a", None, T0)
    e.apply_topup("tu-1", "L1", "runs", 5, T0)
    assert e.record_usage("runs", 5, "a", None, T0).result.limit == 7
    with pytest.raises(TopupAlreadyAppliedError, match="already imported"):
        e.apply_topup("tu-1", "L1", "runs", 5, T0)
    assert e.balances(T0)[0]["limit"] == 7


def test_retry_with_same_key_replays_the_first_answer() -> None:
    e = engine()
    first = e.record_usage("runs", 3, "a", "k1", T0)
    done = e.complete_usage(first, seq=41)
    again = e.record_usage("runs", 3, "a", "k1", T0 + timedelta(seconds=5))
    assert again.replay and again.result.replayed and again.result.seq == 41 == done.seq
    assert e.meters.used("L1", "runs", "total") == 3


def test_same_key_for_a_different_request_is_a_conflict() -> None:
    e = engine()
    e.record_usage("runs", 3, "a", "k1", T0)
    with pytest.raises(IdempotencyConflictError, match="different request"):
        e.record_usage("runs", 4, "a", "k1", T0)
    with pytest.raises(IdempotencyConflictError):
        e.record_usage("runs", 3, "b", "k1", T0)


def test_idempotency_keys_are_forgotten_after_seven_days() -> None:
    e = engine(lic(limit=None))
    e.record_usage("runs", 1, "a", "k1", T0)
    assert e.prune_idempotency(T0 + timedelta(days=7)) == []
    assert e.prune_idempotency(T0 + timedelta(days=7, seconds=1)) == ["k1"]
    assert not e.record_usage("runs", 1, "a", "k1", T0 + timedelta(days=8)).replay


def test_decrement_reduces_usage_but_never_below_zero() -> None:
    e = engine()
    e.record_usage("runs", 4, "a", None, T0)
    d = e.record_usage("runs", 3, "a", None, T0, decrement=True)
    assert d.result.kind == "usage.decrement" and d.result.used == 1 and d.delta == -3
    d = e.record_usage("runs", 9, "a", None, T0, decrement=True)
    assert d.result.used == 0 and d.delta == -1


def test_undo_takes_back_a_charge_whose_record_failed() -> None:
    e = engine()
    d = e.record_usage("runs", 4, "a", "k", T0)
    e.undo_usage(d)
    assert e.meters.used("L1", "runs", "total") == 0
    assert not e.record_usage("runs", 4, "a", "k", T0).replay


def test_usage_goes_to_the_license_with_room_earliest_expiry_first() -> None:
    soon = lic("A", limit=3, expires=T0 + timedelta(days=5))
    later = lic("B", limit=10, expires=T0 + timedelta(days=50))
    e = engine(later, soon)
    assert e.record_usage("runs", 2, "a", None, T0).result.license_id == "A"
    assert e.record_usage("runs", 2, "a", None, T0).result.license_id == "B"
    assert e.record_usage("runs", 1, "a", None, T0).result.license_id == "A"


def test_unknown_meter_and_overdue_report() -> None:
    e = engine(lic(report_every_days=1))
    with pytest.raises(UnknownMeter):
        e.record_usage("cpu", 1, "a", None, T0)
    with pytest.raises(ReportOverdue):
        e.record_usage("runs", 1, "a", None, T0 + timedelta(days=1, seconds=1))


def test_usage_payload_is_compact() -> None:
    r = engine().record_usage("runs", 5, "host-1/pid-42", "k" * 16, T0)
    assert len(msgpack.packb(r.result.payload())) < 60


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(0, 50),
    amounts=st.lists(st.integers(1, 20), max_size=40),
    topups=st.lists(st.integers(1, 10), max_size=3),
)
def test_usage_never_exceeds_limit_under_refuse(
    limit: int, amounts: list[int], topups: list[int]
) -> None:
    e = engine(lic(limit=limit))
    for i, t in enumerate(topups):
        e.apply_topup(f"t{i}", "L1", "runs", t, T0)
    total = limit + sum(topups)
    accepted = 0
    for a in amounts:
        try:
            e.record_usage("runs", a, "c", None, T0)
            accepted += a
        except QuotaExceeded:
            assert accepted + a > total
        assert e.meters.used("L1", "runs", "total") == accepted <= total
