"""Inline-SVG charts and the burn-down arithmetic (meterbox.webcharts)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.webcharts import (
    Series,
    bar_chart,
    burndown_chart,
    daily_used,
    line_chart,
    nice_max,
    project_exhaustion,
    tick_count,
)

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    assert root.get("role") == "img"
    return root


def test_projection_of_a_steady_rate_hits_the_limit_on_the_right_day() -> None:
    samples = [(T0 + timedelta(days=d), 10 * d) for d in range(11)]  # 10 a day
    p = project_exhaustion(samples, 500, T0 + timedelta(days=10))
    assert p.rate_per_day == 10
    assert p.exhausts_at == T0 + timedelta(days=50)
    assert not p.exhausted


def test_projection_uses_the_recent_week_not_the_whole_period() -> None:
    # 100 a day for ten days, then nothing for seven: the recent rate is zero.
    samples = [(T0 + timedelta(days=d), 100 * min(d, 10)) for d in range(18)]
    p = project_exhaustion(samples, 5000, T0 + timedelta(days=17))
    assert p.rate_per_day == 0
    assert p.exhausts_at is None


def test_projection_from_the_period_anchor_on_the_first_day() -> None:
    # Only the period start (0) and one reading an hour later: 24 units a day.
    now = T0 + timedelta(hours=1)
    p = project_exhaustion([(T0, 0), (now, 1)], 48, now)
    assert round(p.rate_per_day) == 24
    assert p.exhausts_at == now + timedelta(days=47 / 24)


def test_projection_of_a_used_up_meter_says_when_it_ran_out() -> None:
    samples = [(T0, 0), (T0 + timedelta(days=2), 60), (T0 + timedelta(days=3), 120)]
    p = project_exhaustion(samples, 100, T0 + timedelta(days=4))
    assert p.exhausted
    assert p.exhausts_at == T0 + timedelta(days=3)


def test_projection_without_limit_or_samples_never_exhausts() -> None:
    assert project_exhaustion([], 10, T0).exhausts_at is None
    assert (
        project_exhaustion(
            [(T0, 1), (T0 + timedelta(days=1), 5)], None, T0 + timedelta(days=1)
        ).exhausts_at
        is None
    )


def test_samples_after_now_are_ignored() -> None:
    p = project_exhaustion([(T0, 0), (T0 + timedelta(days=5), 1000)], 100, T0)
    assert (p.rate_per_day, p.exhausts_at) == (0, None)


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.integers(0, 30 * 24), st.integers(0, 10_000)), min_size=1, max_size=40),
    st.integers(1, 20_000),
)
def test_projection_never_lies_in_the_past_of_the_last_sample(
    raw: list[tuple[int, int]], limit: int
) -> None:
    # A cumulative counter: sort by time and make the values non-decreasing.
    raw.sort()
    used, samples = 0, []
    for h, u in raw:
        used = max(used, u)
        samples.append((T0 + timedelta(hours=h), used))
    now = samples[-1][0]
    p = project_exhaustion(samples, limit, now)
    assert p.rate_per_day >= 0
    if p.exhausted:
        assert used >= limit
    elif p.exhausts_at is not None:
        assert p.exhausts_at >= samples[-1][0]
        assert used < limit


def test_daily_used_carries_values_forward_over_days_without_samples() -> None:
    samples = [(T0 + timedelta(hours=5), 7), (T0 + timedelta(days=2, hours=1), 9)]
    days = daily_used(samples, T0.date(), T0.date() + timedelta(days=3))
    assert [u for _, u in days] == [7, 7, 9, 9]
    assert daily_used(samples, T0.date(), T0.date() - timedelta(days=1)) == []


def test_nice_max_and_ticks_give_round_gridlines() -> None:
    assert [nice_max(v) for v in (0, 0.3, 1, 3, 7, 120, 480, 501)] == [
        1,
        0.5,
        1,
        5,
        10,
        200,
        500,
        1000,
    ]
    assert tick_count(1, integer=True) == 2
    assert tick_count(2, integer=True) == 3
    assert tick_count(500) == 6
    assert tick_count(200) == 5


def test_line_chart_escapes_names_and_describes_itself() -> None:
    svg = line_chart(
        [Series("<script>alert(1)</script>", ((0, 1), (1, 5)))], title='A & "B"', hline=(8, "limit")
    )
    root = parse(svg)
    assert "<script>" not in svg
    assert root.get("aria-label") == 'A & "B"'
    desc = root.find(SVG + "desc")
    assert desc is not None and "last 5" in (desc.text or "") and "limit: 8" in (desc.text or "")
    assert "style=" not in svg


def test_empty_charts_say_there_is_no_data() -> None:
    for svg in (
        line_chart([], title="t"),
        bar_chart([], title="t"),
        burndown_chart([], 5, None, title="t"),
    ):
        assert "No data yet" in svg
        parse(svg)


def test_bar_chart_summarises_the_highest_bar() -> None:
    svg = bar_chart([("09:00", 1), ("10:00", 3), ("11:00", 2)], title="Peaks")
    desc = parse(svg).find(SVG + "desc")
    assert desc is not None and "highest 3 at 10:00" in (desc.text or "")
    assert svg.count("<rect") == 4  # background + three bars


def test_burndown_draws_remaining_and_a_dashed_projection() -> None:
    days = [(date(2026, 3, d), 10 * d) for d in range(1, 11)]
    p = project_exhaustion(
        [(datetime(2026, 3, d, tzinfo=UTC), u) for d, u in ((dd.day, uu) for dd, uu in days)],
        200,
        datetime(2026, 3, 10, tzinfo=UTC),
    )
    svg = burndown_chart(days, 200, p, title="Burn", period_end=date(2026, 3, 31))
    root = parse(svg)
    lines = root.findall(SVG + "polyline")
    assert len(lines) == 2
    assert lines[1].get("stroke-dasharray") == "6 4"
    assert "remaining" in svg and "projected" in svg


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=12), st.floats(0, 1e9, allow_nan=False)),
        min_size=1,
        max_size=30,
    )
)
def test_any_bars_make_well_formed_svg(bars: list[tuple[str, float]]) -> None:
    parse(bar_chart(bars, title="any"))
