"""The pure cluster checks: concurrent instances, lease intervals, silent members.

Each property is checked against a brute-force count over every instant that matters.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from meterbox.licenses import Feature, License
from meterbox.vendorkit._cluster import (
    MemberReport,
    SeatRow,
    lease_intervals,
    member_states,
    peak_concurrent,
    peak_leases,
    seat_findings,
)
from meterbox.vendorkit._db.store import Activity
from meterbox.vendorkit._ingest_core import check_clones

DAY_US = 86_400_000_000
spans = st.tuples(st.integers(0, 100), st.integers(0, 100)).map(lambda t: (min(t), max(t)))


def _brute_concurrent(span: tuple[int, int], others: list[tuple[int, int]]) -> int:
    return 1 + max(
        (sum(lo <= t <= hi for lo, hi in others) for t in range(span[0], span[1] + 1)), default=0
    )


@given(spans, st.lists(spans, max_size=8))
def test_peak_concurrent_matches_a_count_at_every_instant(
    span: tuple[int, int], others: list[tuple[int, int]]
) -> None:
    assert peak_concurrent(span, others) == _brute_concurrent(span, others)


@given(spans, st.lists(spans, max_size=6), st.integers(1, 6))
def test_a_clone_is_named_exactly_when_more_than_the_cluster_size_run_at_once(
    span: tuple[int, int], others: list[tuple[int, int]], size: int
) -> None:
    activity = [Activity(f"i{n}", "lic", lo, hi) for n, (lo, hi) in enumerate(others)]
    check = check_clones("me", ["lic"], span, activity, {"lic": size})
    cloned = any(f.code == "license.cloned" for f in check.findings)
    assert cloned == (_brute_concurrent(span, others) > size)
    assert all(f.severity == "critical" for f in check.findings if f.code == "license.cloned")


@given(spans, st.lists(spans, min_size=1, max_size=4))
def test_without_a_cluster_size_any_overlap_is_a_clone_as_before(
    span: tuple[int, int], others: list[tuple[int, int]]
) -> None:
    activity = [Activity(f"i{n}", "lic", lo, hi) for n, (lo, hi) in enumerate(others)]
    overlapping = sum(lo <= span[1] and span[0] <= hi for lo, hi in others)
    check = check_clones("me", ["lic"], span, activity)
    assert len(check.flagged) == overlapping
    assert sum(f.code == "license.instance_replaced" for f in check.findings) == (
        len(others) - overlapping
    )


@given(st.lists(spans, max_size=10))
def test_peak_leases_matches_a_count_at_every_instant(intervals: list[tuple[int, int]]) -> None:
    peak, at = peak_leases(intervals)
    counts = [sum(lo <= t < hi for lo, hi in intervals) for t in range(0, 101)]
    assert peak == max(counts)
    if peak:
        assert counts[at] == peak
        assert counts.index(peak) == at


def _lic(seats: int, overdraft: int = 0) -> License:
    return License(
        license_id="lic",
        customer="C",
        product="P",
        issued=datetime(2026, 1, 1, tzinfo=UTC),
        vendor_key_id="00" * 8,
        features={"cad": Feature(seats, overdraft, lease_seconds=60)},
        report_every_days=30,
        grace_days=7,
        cluster_size=3,
    )


def test_a_lease_without_an_end_row_ends_one_lease_after_its_last_renewal() -> None:
    rows: list[SeatRow] = [
        ("a", 1, "lic", "cad", 0, "checkout", "L"),
        ("a", 2, "lic", "cad", 50_000_000, "renew", "L"),
    ]
    assert lease_intervals(rows, {"cad": 60_000_000}, (0, 10**12)) == {"cad": [(0, 110_000_000)]}


def test_two_nodes_may_reuse_one_lease_id() -> None:
    rows: list[SeatRow] = [
        ("a", 1, "lic", "cad", 0, "checkout", "L"),
        ("b", 1, "lic", "cad", 10, "checkout", "L"),
        ("a", 2, "lic", "cad", 100, "release", "L"),
        ("b", 2, "lic", "cad", 100, "release", "L"),
    ]
    assert seat_findings(_lic(1), rows, (0, 200))[0].code == "enforcement.seats_exceeded"
    assert seat_findings(_lic(1, overdraft=1), rows, (0, 200)) == []


def test_a_release_and_a_checkout_at_one_instant_are_not_counted_together() -> None:
    rows: list[SeatRow] = [
        ("a", 1, "lic", "cad", 0, "checkout", "L1"),
        ("a", 2, "lic", "cad", 100, "release", "L1"),
        ("b", 1, "lic", "cad", 100, "checkout", "L2"),
        ("b", 2, "lic", "cad", 200, "release", "L2"),
    ]
    assert seat_findings(_lic(1), rows, (0, 300)) == []


def test_members_are_silent_past_the_deadline_or_far_behind_the_newest() -> None:
    now = 100 * DAY_US
    states = member_states(
        _lic(1),
        [
            MemberReport("fresh", now - DAY_US),
            MemberReport("late", now - 40 * DAY_US),
            MemberReport("ok", now - 20 * DAY_US),
            MemberReport("never", None),
        ],
        now,
    )
    by_id = {s.instance_id: s for s in states}
    assert not by_id["fresh"].silent
    assert not by_id["ok"].silent
    assert by_id["late"].silent
    assert "deadline" in by_id["late"].why
    assert by_id["never"].silent


def test_without_a_reporting_interval_a_member_far_behind_the_others_is_silent() -> None:
    lic = License(**{**{n: getattr(_lic(1), n) for n in _lic(1).__dataclass_fields__},
                     "report_every_days": None})  # fmt: skip
    states = member_states(
        lic, [MemberReport("a", 100 * DAY_US), MemberReport("b", 60 * DAY_US)], 100 * DAY_US
    )
    assert [s.instance_id for s in states if s.silent] == ["b"]
    assert "40 days older" in states[0].why
