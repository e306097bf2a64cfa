"""The evaluation's calibration (bench/anomaly_eval.py): what the usage thresholds are
fitted on is every span the rule judges, counted by reporting interval and length."""

from __future__ import annotations

import sys
from pathlib import Path

from support.anomaly_events import MIN, Builder, history, week_with_seats

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from anomaly_eval import THRESHOLDS, Calibration

#: Weeks that swing by about 8 %, then a month of 30 % less.
WEEKS = (15.0, 13.8, 16.2, 15.0, 14.0, 16.5, 15.3, 13.9, *(15 / 0.7,) * 4)


def test_every_span_is_scored_and_the_ones_past_their_threshold_are_counted() -> None:
    b = Builder()
    reports = [week_with_seats(b, usage_every=int(m * MIN)) for m in WEEKS]
    cal = Calibration()
    for n in range(3, len(reports) + 1):
        cal.add(history(reports[:n]), [], THRESHOLDS, 7)
    rows = cal.span_rows()
    assert set(rows) == {"7d/1", "7d/2", "7d/3", "7d/4"}
    one, four = rows["7d/1"], rows["7d/4"]
    assert isinstance(one, dict) and isinstance(four, dict)
    # A single week of 30 % less is within the swing; the month of it, over four
    # reports, is past the span's threshold.
    assert one["alarms"] == 0
    assert four["alarms"] >= 1
    assert four["min_past_floor"] is not None and four["min_past_floor"] <= -2.5
    assert cal.as_dict()["usage_spans"] == rows


def test_calibrations_merge_into_one() -> None:
    b = Builder()
    reports = [week_with_seats(b, usage_every=int(m * MIN)) for m in WEEKS]
    a, c, both = Calibration(), Calibration(), Calibration()
    for n in range(3, len(reports) + 1):
        (a if n % 2 else c).add(history(reports[:n]), [], THRESHOLDS, 7)
        both.add(history(reports[:n]), [], THRESHOLDS, 7)
    a.merge(c)
    assert a.reports == both.reports
    assert a.span_rows() == both.span_rows()
