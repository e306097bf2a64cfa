"""Billing core: exact units, prepaid, overage and hourly seat peaks from plain rows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import ConfigError
from meterbox.vendorkit.billing import (
    HOUR_MS,
    FindingIn,
    LicenseTerms,
    MeterTerms,
    Period,
    SeatEventIn,
    TopupIn,
    build_statement,
    meter_lines,
)

JAN = Period(2026, 1)
T = JAN.start_ms
ACME = LicenseTerms(
    "lic_a",
    "ACME",
    {
        "runs": MeterTerms(1000, "month"),
        "exports": MeterTerms(50, "total"),
        "views": MeterTerms(None, "total"),
    },
)


def _line(lines: list, meter: str):  # type: ignore[no-untyped-def]
    return next(x for x in lines if x.meter == meter)


def test_period_bounds_and_parsing() -> None:
    assert Period.parse("2026-12").end_ms == Period(2027, 1).start_ms
    assert JAN.end_ms - JAN.start_ms == 31 * 24 * HOUR_MS
    for bad in ("2026-13", "2026-1", "26-01", "2026-00", "x"):
        with pytest.raises(ConfigError):
            Period.parse(bad)


def test_monthly_meter_overage_is_exact() -> None:
    lines = meter_lines(JAN, [ACME], {("lic_a", "runs"): 1234}, {}, [])
    runs = _line(lines, "runs")
    assert (runs.used, runs.prepaid, runs.overage) == (1234, 1000, 234)


def test_monthly_meter_topup_in_period_raises_prepaid() -> None:
    topups = [
        TopupIn("lic_a", "runs", 200, T + 5),
        TopupIn("lic_a", "runs", 999, T - 5),  # last month's top-up does not count
    ]
    runs = _line(meter_lines(JAN, [ACME], {("lic_a", "runs"): 1234}, {}, topups), "runs")
    assert (runs.prepaid, runs.overage) == (1200, 34)


def test_total_meter_bills_only_overage_accrued_in_the_period() -> None:
    topups = [TopupIn("lic_a", "exports", 10, T - 1000)]
    lines = meter_lines(JAN, [ACME], {("lic_a", "exports"): 30}, {("lic_a", "exports"): 40}, topups)
    ex = _line(lines, "exports")
    # prepaid 60; 40 used before (no overage yet), 70 to date: 10 over, all of it new.
    assert (ex.used, ex.prepaid, ex.used_to_date, ex.overage_to_date, ex.overage) == (
        30,
        60,
        70,
        10,
        10,
    )
    feb = meter_lines(
        Period(2026, 2), [ACME], {("lic_a", "exports"): 5}, {("lic_a", "exports"): 70}, topups
    )
    assert (_line(feb, "exports").overage, _line(feb, "exports").overage_to_date) == (5, 15)


def test_unlimited_meter_and_decrements() -> None:
    lines = meter_lines(JAN, [ACME], {("lic_a", "views"): 10**15, ("lic_a", "runs"): -5}, {}, [])
    assert (_line(lines, "views").prepaid, _line(lines, "views").overage) == (None, 0)
    assert (_line(lines, "runs").used, _line(lines, "runs").overage) == (-5, 0)


def test_decrements_are_itemised_on_the_meter_line() -> None:
    # Regression: decrements were netted into ``used`` and nowhere shown on the bill.
    st_ = build_statement(
        JAN, [ACME], {("lic_a", "runs"): 1003}, {}, [], [], decrements={("lic_a", "runs"): 7}
    )
    runs = next(x for x in st_.meters if x.meter == "runs")
    assert (runs.increments, runs.decrements, runs.used, runs.overage) == (1010, 7, 1003, 3)
    header, *rows = st_.to_csv().splitlines()
    assert header.endswith(",increments,decrements")
    assert "2026-01,ACME,lic_a,runs,month,1003,1000,3,,,1010,7" in rows


def test_meter_used_but_not_licensed_is_all_overage() -> None:
    lines = meter_lines(JAN, [ACME], {("lic_a", "ghost"): 7}, {}, [])
    assert (_line(lines, "ghost").prepaid, _line(lines, "ghost").overage) == (0, 7)


def _seat(inst: str, seq: int, ts: int, kind: str, lease: str, feature: str = "cad") -> SeatEventIn:
    return SeatEventIn(inst, seq, "lic_a", feature, ts, kind, lease)


def test_peak_seats_per_hour_across_instances_and_carried_leases() -> None:
    h = HOUR_MS
    events = [
        _seat("i1", 1, T + 10, "checkout", "a"),
        _seat("i1", 2, T + 20, "checkout", "b"),
        _seat("i1", 3, T + 30, "release", "a"),
        _seat("i2", 1, T + 25, "checkout", "c"),  # peak 3 at T+25
        _seat("i2", 2, T + 2 * h + 5, "expire", "c"),
        _seat("i1", 4, T + 3 * h, "renew", "b"),
        _seat("i1", 5, T + 3 * h + 1, "release", "b"),
        _seat("i1", 6, T + 3 * h + 2, "denied", "-"),
    ]
    st_ = build_statement(JAN, [ACME], {}, {}, [], events)
    assert [(s.hour, s.peak) for s in st_.seats] == [
        ("2026-01-01T00:00Z", 3),
        ("2026-01-01T01:00Z", 2),  # no event this hour: b and c still held
        ("2026-01-01T02:00Z", 2),
        ("2026-01-01T03:00Z", 1),
    ]
    assert st_.denials == {("lic_a", "cad"): 1}


def test_leases_from_before_the_period_count_from_its_first_hour() -> None:
    events = [
        _seat("i1", 1, T - 5 * HOUR_MS, "checkout", "a"),
        _seat("i1", 2, T + 2 * HOUR_MS + 1, "release", "a"),
    ]
    st_ = build_statement(JAN, [ACME], {}, {}, [], events)
    assert [(s.hour, s.peak) for s in st_.seats] == [
        ("2026-01-01T00:00Z", 1),
        ("2026-01-01T01:00Z", 1),
        ("2026-01-01T02:00Z", 1),
    ]
    assert [x.seat_ms for x in st_.seat_lines] == [2 * HOUR_MS + 1]


def test_lease_live_at_export_ends_at_the_report_time_not_the_month_end() -> None:
    # Regression: a 10-minute lease still live at export was billed as a held seat in
    # every hour to the end of the month (724 hourly rows).
    checkout = T + 20 * 24 * HOUR_MS + 5 * 60_000
    report_at = checkout + 10 * 60_000
    events = [_seat("i1", 1, checkout, "checkout", "a")]
    st_ = build_statement(JAN, [ACME], {}, {}, [], events, report_times={"i1": report_at})
    assert [(s.hour, s.peak) for s in st_.seats] == [("2026-01-21T00:00Z", 1)]
    (line,) = st_.seat_lines
    assert (line.seat_ms, line.peak, line.live_leases) == (10 * 60_000, 1, 1)
    # The next report renews and then releases it: one lease, continued, never doubled.
    later = [
        *events,
        _seat("i1", 7, checkout + 50 * 60_000, "renew", "a"),
        _seat("i1", 9, checkout + 70 * 60_000, "release", "a"),
    ]
    again = build_statement(
        JAN, [ACME], {}, {}, [], later, report_times={"i1": checkout + 80 * 60_000}
    )
    assert [(s.hour, s.peak) for s in again.seats] == [
        ("2026-01-21T00:00Z", 1),
        ("2026-01-21T01:00Z", 1),
    ]
    (line,) = again.seat_lines
    assert (line.seat_ms, line.peak, line.live_leases) == (70 * 60_000, 1, 0)


def test_seat_handed_over_at_one_instant_is_one_seat() -> None:
    events = [
        _seat("i1", 1, T + 10, "checkout", "a"),
        _seat("i1", 2, T + 50, "release", "a"),
        _seat("i2", 1, T + 50, "checkout", "b"),
        _seat("i2", 2, T + 90, "release", "b"),
    ]
    st_ = build_statement(JAN, [ACME], {}, {}, [], events)
    assert [(s.peak, x.seat_ms) for s, x in zip(st_.seats, st_.seat_lines, strict=True)] == [
        (1, 80)
    ]


def test_statement_findings_and_formats() -> None:
    f = FindingIn("d" * 64, "i1", ("lic_a",), "clock.wall_step", "warning", "moved", 7)
    st_ = build_statement(JAN, [ACME], {("lic_a", "runs"): 1001}, {}, [], [], [f])
    assert [(x.code, x.customer, x.seq) for x in st_.findings] == [("clock.wall_step", "ACME", 7)]
    csv_text = st_.to_csv()
    assert "2026-01,ACME,lic_a,runs,month,1001,1000,1,,,1001,0" in csv_text.splitlines()
    data = st_.to_json()
    assert data["period"] == "2026-01"
    assert {m["meter"] for m in data["meters"]} == {"runs", "exports", "views"}


usage_maps = st.dictionaries(
    st.sampled_from(["runs", "exports", "views", "ghost"]),
    st.integers(min_value=-(10**6), max_value=10**12),
)


@settings(max_examples=150, deadline=None)
@given(
    usage_maps,
    usage_maps,
    st.lists(
        st.tuples(
            st.sampled_from(["runs", "exports"]),
            st.integers(min_value=1, max_value=10**9),
            st.integers(min_value=T - 10**10, max_value=JAN.end_ms + 10**9),
        ),
        max_size=5,
    ),
)
def test_property_overage_never_negative_and_consistent(
    period_use: dict[str, int], before_use: dict[str, int], raw_topups: list[tuple[str, int, int]]
) -> None:
    used = {("lic_a", m): v for m, v in period_use.items()}
    before = {("lic_a", m): v for m, v in before_use.items()}
    topups = [TopupIn("lic_a", m, u, ts) for m, u, ts in raw_topups]
    lines = meter_lines(JAN, [ACME], used, before, topups)
    assert {x.meter for x in lines} == set(ACME.meters) | set(period_use)
    for x in lines:
        assert x.overage >= 0
        assert x.used == period_use.get(x.meter, 0)
        if x.prepaid is None:
            assert x.overage == 0
            continue
        if x.period_kind == "month":
            assert x.overage == max(0, x.used - x.prepaid)
            assert x.overage <= max(0, x.used)
        else:
            assert x.used_to_date == before_use.get(x.meter, 0) + x.used
            assert x.overage_to_date == max(0, x.used_to_date - x.prepaid)
            # The period never bills more than it used, nor more than the total overage.
            assert x.overage <= max(0, x.used)
            assert x.overage <= x.overage_to_date
    # The statement's total overage equals an independent computation from the inputs.
    expected = 0
    for meter in set(ACME.meters) | set(period_use):
        terms = ACME.meters.get(meter, MeterTerms(0, "total"))
        if terms.limit is None:
            continue
        use, prior = period_use.get(meter, 0), before_use.get(meter, 0)
        if terms.period == "month":
            extra = sum(u for m, u, ts in raw_topups if m == meter and T <= ts < JAN.end_ms)
            expected += max(0, use - terms.limit - extra)
        else:
            prepaid = terms.limit + sum(
                u for m, u, ts in raw_topups if m == meter and ts < JAN.end_ms
            )
            # A refund after overage was billed is no credit here: it lowers overage_to_date.
            expected += max(0, max(0, prior + use - prepaid) - max(0, prior - prepaid))
    assert sum(x.overage for x in lines) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["i1", "i2"]), st.booleans(), st.integers(0, 30 * HOUR_MS)),
        max_size=30,
    )
)
def test_property_peaks_bounded_by_checkouts(ops: list[tuple[str, bool, int]]) -> None:
    events = []
    open_: dict[str, list[str]] = {"i1": [], "i2": []}
    for n, (inst, checkout, offset) in enumerate(ops):
        if checkout or not open_[inst]:
            lease = f"{inst}-{n}"
            open_[inst].append(lease)
            events.append(_seat(inst, n, T + offset, "checkout", lease))
        else:
            events.append(_seat(inst, n, T + offset, "release", open_[inst].pop(0)))
    st_ = build_statement(JAN, [ACME], {}, {}, [], events)
    checkouts = sum(1 for e in events if e.kind == "checkout")
    for s in st_.seats:
        assert 1 <= s.peak <= checkouts


# ------------------------------------------------- bill against a reference
LICS = ("lic_a", "lic_b")
TERMS = [
    ACME,
    LicenseTerms("lic_b", "Globex", {"runs": MeterTerms(5, "month")}),
]
history_ops = st.lists(
    st.tuples(
        st.sampled_from(["checkout", "renew", "release", "expire", "denied", "use", "give_back"]),
        st.sampled_from(["i1", "i2"]),
        st.sampled_from(LICS),
        st.sampled_from(["cad", "cam"]),
        # Time since the previous operation; ties and exact hours are where seat
        # handovers and hour boundaries go wrong.
        st.sampled_from([0, 0, 1, HOUR_MS]) | st.integers(0, 50 * 60_000),
        st.integers(0, 7),  # which open lease, or how many units
    ),
    max_size=60,
)


def _reference_seats(
    truth: list[tuple[str, str, int, int, bool]], denied: dict[tuple[str, str], int]
) -> dict[tuple[str, str], object]:
    """Seat time clipped to the period, most held at one instant, denials, per key."""
    start, end = T, JAN.end_ms
    expected_lines: dict[tuple[str, str], object] = {}
    for lic_id in LICS:
        for feat in ("cad", "cam"):
            mine = [
                (max(s, start), min(e, end), live)
                for (lic0, feat0, s, e, live) in truth
                if (lic0, feat0) == (lic_id, feat) and max(s, start) < min(e, end)
            ]
            if not mine and not denied.get((lic_id, feat)):
                continue

            def held_at(t: int, mine: list[tuple[int, int, bool]] = mine) -> int:
                return sum(1 for s, e, _ in mine if s <= t < e)

            hours: dict[int, int] = {}
            for s, e, _ in mine:
                for h in range(s // HOUR_MS, (e - 1) // HOUR_MS + 1):
                    # The most held at once in an hour is reached at the hour's start or
                    # at some lease's start inside it.
                    instants = [max(h * HOUR_MS, start)] + [
                        s2 for s2, _, _ in mine if h * HOUR_MS <= s2 < (h + 1) * HOUR_MS
                    ]
                    hours[h] = max(held_at(t) for t in instants)
            expected_lines[(lic_id, feat)] = (
                sum(e - s for s, e, _ in mine),
                max(hours.values(), default=0),
                denied.get((lic_id, feat), 0),
                sum(1 for *_, live in mine if live),
                sorted((datetime_hour(h), p) for h, p in hours.items() if p > 0),
            )
    return expected_lines


@settings(max_examples=200, deadline=None)
@given(history_ops, st.integers(0, 3 * HOUR_MS), st.integers(-4 * HOUR_MS, 2 * HOUR_MS))
def test_property_every_bill_line_matches_a_reference_computation(
    ops: list[tuple[str, str, str, str, int, int]], tail: int, offset: int
) -> None:
    # Simulate servers: the truth is each lease's [checkout, end) and each unit.
    now = T + offset
    seqs = {"i1": 0, "i2": 0}
    open_: dict[str, list[tuple[str, str, str, int]]] = {"i1": [], "i2": []}
    truth: list[tuple[str, str, int, int, bool]] = []  # license, feature, start, end, live
    events: list[SeatEventIn] = []
    units: dict[tuple[str, str], list[int]] = {}
    denied: dict[tuple[str, str], int] = {}
    for n, (kind, inst, lic_id, feat, step, pick) in enumerate(ops):
        now += step
        seqs[inst] += 1
        seq = seqs[inst]
        leases = open_[inst]
        if kind in ("use", "give_back"):
            if T <= now < JAN.end_ms:
                sign = 1 if kind == "use" else -1
                units.setdefault((lic_id, "runs"), []).append(sign * (pick + 1))
            continue
        if kind == "denied":
            events.append(SeatEventIn(inst, seq, lic_id, feat, now, "denied", None))
            if T <= now < JAN.end_ms:
                denied[(lic_id, feat)] = denied.get((lic_id, feat), 0) + 1
            continue
        if kind == "checkout" or not leases:
            lease = f"{inst}-{n}"
            leases.append((lease, lic_id, feat, now))
            events.append(SeatEventIn(inst, seq, lic_id, feat, now, "checkout", lease))
            continue
        lease, lic0, feat0, start = leases[pick % len(leases)]
        events.append(SeatEventIn(inst, seq, lic0, feat0, now, kind, lease))
        if kind != "renew":
            leases.remove((lease, lic0, feat0, start))
            truth.append((lic0, feat0, start, now, False))
    report_at = now + tail
    report_times = {inst: report_at for inst in seqs if seqs[inst]}
    for leases in open_.values():
        truth.extend((lic0, feat0, start, report_at, True) for _, lic0, feat0, start in leases)

    used = {k: sum(v) for k, v in units.items()}
    given_back = {k: -sum(u for u in v if u < 0) for k, v in units.items()}
    st_ = build_statement(
        JAN,
        TERMS,
        used,
        {},
        [],
        events,
        report_times=report_times,
        decrements=given_back,
    )

    # Meter lines: units and decrements itemised, used their difference.
    for line in st_.meters:
        raw = units.get((line.license_id, line.meter), [])
        assert line.increments == sum(u for u in raw if u > 0)
        assert line.decrements == -sum(u for u in raw if u < 0)
        assert line.used == sum(raw)
    # Seat lines, against a direct computation from the simulated truth.
    expected_lines = _reference_seats(truth, denied)
    got = {
        (x.license_id, x.feature): (
            x.seat_ms,
            x.peak,
            x.denials,
            x.live_leases,
            sorted(
                (s.hour, s.peak)
                for s in st_.seats
                if (s.license_id, s.feature) == (x.license_id, x.feature)
            ),
        )
        for x in st_.seat_lines
    }
    assert got == expected_lines


def datetime_hour(hour_index: int) -> str:
    return datetime.fromtimestamp(hour_index * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")


def test_a_seat_removed_by_the_site_admin_is_billed_up_to_its_removal() -> None:
    from meterbox.vendorkit.billing import SeatEventIn, lease_intervals

    events = [
        SeatEventIn("i1", 1, "L", "cad", 1_000, "checkout", "a"),
        SeatEventIn("i1", 2, "L", "cad", 61_000, "remove", "a"),
        SeatEventIn("i1", 3, "L", "cad", 90_000, "renew", "b"),
    ]
    intervals, _ = lease_intervals(events, {"i1": 3_600_000})
    removed = next(x for x in intervals if x.lease_id == "a")
    assert (removed.start_ms, removed.end_ms) == (1_000, 61_000)
