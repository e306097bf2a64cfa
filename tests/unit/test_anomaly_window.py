"""The ingest window, cut from a whole history in memory (the evaluation's reader).

The store's bounded read is checked against this cut in
tests/integration/test_vendor_ingest_anomalies.py; here the cut's own rules.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.vendorkit.anomaly import (
    DAY_MS,
    INGEST_MIN_REPORTS,
    INGEST_REPORTS,
    INGEST_WINDOW_MS,
    Event,
    InstanceHistory,
    ReportView,
    ingest_view,
    window_since,
)
from meterbox.vendorkit.anomaly._features import CHECKOUT, RELEASE, USAGE

MIN = 60_000


def history(gaps_days: list[int], *, seq_per_report: int = 10) -> InstanceHistory:
    """One usage record a minute after each report's start, reports ``gaps_days`` apart."""
    reports = []
    t, seq = 0, 1
    for gap in gaps_days:
        events = (Event(seq, USAGE, t + MIN, amount=1), Event(seq + 1, USAGE, t + 2 * MIN))
        t += gap * DAY_MS
        reports.append(ReportView(f"r{seq}", t, t + 1000, seq, seq + seq_per_report - 1, events))
        seq += seq_per_report
    return InstanceHistory("i", "lic", reports=tuple(reports))


def test_no_bound_while_the_history_is_short() -> None:
    h = history([7] * (INGEST_MIN_REPORTS + 1))
    assert window_since(10**12, [r.created_ms for r in h.reports[:-1]]) is None
    assert ingest_view(h) == h


def test_time_bounds_weekly_reporters_and_the_count_monthly_ones() -> None:
    weekly = ingest_view(history([7] * 20))
    assert len(weekly.reports) == INGEST_REPORTS + 1
    first = weekly.reports[-1].events[0].wall_ms
    assert all(e.wall_ms >= first - INGEST_WINDOW_MS - 7 * DAY_MS for e in weekly.events)
    monthly = ingest_view(history([30] * 20))
    with_records = [bool(r.events) for r in monthly.reports]
    # Eight weeks hold two monthly reports; the count keeps eight and the judged one.
    assert with_records == [False] * (INGEST_REPORTS - INGEST_MIN_REPORTS) + [True] * (
        INGEST_MIN_REPORTS + 1
    )


def test_the_bound_is_a_whole_minute_and_never_after_the_judged_records() -> None:
    since = window_since(100 * DAY_MS + 12_345, [d * DAY_MS + 777 for d in range(20)])
    assert since is not None
    assert since % MIN == 0
    assert since <= 100 * DAY_MS + 12_345 - INGEST_WINDOW_MS


def test_a_lease_out_before_the_window_and_ended_in_it_is_known() -> None:
    h = history([30] * 12)
    first = h.reports[0]
    out = ReportView(
        first.digest,
        first.created_ms,
        first.received_ms,
        first.from_seq,
        first.head_seq,
        (*first.events, Event(first.from_seq + 5, CHECKOUT, MIN * 3, lease="held")),
    )
    last = h.reports[-1]
    back = ReportView(
        last.digest,
        last.created_ms,
        last.received_ms,
        last.from_seq,
        last.head_seq,
        (*last.events, Event(last.from_seq + 5, RELEASE, last.events[-1].wall_ms, lease="held")),
    )
    whole = InstanceHistory("i", "lic", reports=(out, *h.reports[1:-1], back))
    view = ingest_view(whole)
    assert not any(e.lease == "held" and e.kind == CHECKOUT for e in view.events)
    assert view.known_leases == {"held"}
    assert whole.known_leases == frozenset()


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 45), min_size=1, max_size=30),
    first_shift=st.integers(-3 * DAY_MS, 0),
)
def test_the_cut_keeps_the_judged_report_and_is_a_fixed_point(
    gaps: list[int], first_shift: int
) -> None:
    h = history(gaps)
    judged = h.reports[-1]
    first = judged.events[0].wall_ms + first_shift
    view = ingest_view(h, first)
    assert view.reports[-1] == judged
    assert len(view.reports) == min(len(h.reports), INGEST_REPORTS + 1)
    since = window_since(first, [r.created_ms for r in view.reports[:-1]])
    for mine, theirs in zip(view.reports, h.reports[-len(view.reports) :], strict=True):
        assert (mine.digest, mine.from_seq, mine.head_seq) == (
            theirs.digest,
            theirs.from_seq,
            theirs.head_seq,
        )
        assert mine.events == tuple(e for e in theirs.events if since is None or e.wall_ms >= since)
    assert ingest_view(view, first) == view
