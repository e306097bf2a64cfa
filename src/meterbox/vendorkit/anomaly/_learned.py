"""The learned detector: how unlike a customer's accepted history is each day of a report.

Per day (UTC) it builds a feature vector from the hourly series (see :data:`FEATURES`),
fits scikit-learn's ``IsolationForest`` on the customer's accepted days, and scores the
complete days of the judged report. A day is reported only when the forest puts it
at or beyond every accepted day *and* at least one feature is far out by a robust z-score
(median and MAD of the accepted days) - the z-scores name the features that drove the
finding, which a forest alone cannot explain.

Deterministic: the forest is seeded, and the data decide everything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from sklearn.ensemble import IsolationForest

from meterbox.vendorkit.anomaly._features import (
    BOOT,
    DAY_MS,
    HOUR_MS,
    WEEK_HOURS,
    Event,
    InstanceHistory,
    hour_of_week,
    hourly,
    robust_z,
)
from meterbox.vendorkit.anomaly._rules import LEARNED, Anomaly

FEATURES: Final = (
    "log_units",
    "log_units_vs_season",
    "log_seat_hours",
    "units_per_seat_hour",
    "max_silence_hours",
    "boots",
    "busy_hours_without_usage",
)
#: Accepted days needed before the detector speaks (two weeks).
MIN_DAYS: Final = 14


def feature_floor(name: str, history: Sequence[float]) -> float:
    """The smallest honest spread of one feature (see :func:`robust_z`).

    * logs of volumes (units, seat-hours, units against the season): 0.25, a day
      a quarter busier or quieter than usual is ordinary;
    * units per seat-hour: 15 % of its median;
    * counts (boots, busy hours without usage): Poisson, the square root of the
      median count and never below one; one restart on a history without any is one
      standard deviation, not a billion;
    * the longest silence in hours: one hour (records come in batches).
    """
    med = float(np.median(history)) if len(history) else 0.0
    if name in ("log_units", "log_units_vs_season", "log_seat_hours"):
        return 0.25
    if name == "units_per_seat_hour":
        return max(0.15 * abs(med), 0.05)
    if name in ("boots", "busy_hours_without_usage"):
        return math.sqrt(max(med, 1.0))
    return 1.0


@dataclass(frozen=True, slots=True)
class LearnedConfig:
    z_min: float = 6.0
    trees: int = 200
    seed: int = 0


def day_features(events: Sequence[Event]) -> dict[int, list[float]]:
    """Feature vectors per UTC day start (ms) for every complete day the events cover."""
    if not events:
        return {}
    evs = sorted(events, key=lambda e: e.seq)
    hours, _ = hourly(evs)
    first, last = evs[0].wall_ms, max(e.wall_ms for e in evs)
    season = _season(hours.units, first, last)
    silence: dict[int, float] = {}
    boots: dict[int, int] = {}
    prev = evs[0]
    for e in evs[1:]:
        d = e.wall_ms - e.wall_ms % DAY_MS
        gap = (e.wall_ms - prev.wall_ms) / HOUR_MS
        silence[d] = max(silence.get(d, 0.0), gap)
        if e.kind == BOOT:
            boots[d] = boots.get(d, 0) + 1
        prev = e
    out: dict[int, list[float]] = {}
    day = first - first % DAY_MS + DAY_MS
    while day + DAY_MS <= last:
        hs = range(day, day + DAY_MS, HOUR_MS)
        units = sum(hours.units.get(h, 0) for h in hs)
        seat_h = sum(hours.seat_hours(h) for h in hs)
        expected = sum(season[hour_of_week(h)] for h in hs)
        idle = sum(1 for h in hs if hours.seat_hours(h) >= 1 and hours.records.get(h, 0) == 0)
        out[day] = [
            math.log1p(max(units, 0)),
            math.log((max(units, 0) + 1) / (expected + 1)),
            math.log1p(seat_h),
            units / seat_h if seat_h >= 1 else 0.0,
            silence.get(day, 0.0),
            float(boots.get(day, 0)),
            float(idle),
        ]
        day += DAY_MS
    return out


def _season(units: dict[int, int], first: int, last: int) -> list[float]:
    """Median units per hour of week over the span (zero-filled hours count)."""
    per: list[list[int]] = [[] for _ in range(WEEK_HOURS)]
    h = first - first % HOUR_MS
    while h <= last:
        per[hour_of_week(h)].append(units.get(h, 0))
        h += HOUR_MS
    return [float(np.median(v)) if v else 0.0 for v in per]


def learned(
    judged: InstanceHistory,
    customer_history: Sequence[InstanceHistory] = (),
    config: LearnedConfig | None = None,
) -> list[Anomaly]:
    """Score the judged report's complete days against the customer's accepted days."""
    cfg = config or LearnedConfig()
    if not judged.reports or not judged.reports[-1].events:
        return []
    report = judged.reports[-1]
    train: list[list[float]] = []
    for h in (*customer_history, judged):
        past = [e for r in (h.reports[:-1] if h is judged else h.reports) for e in r.events]
        train.extend(day_features(past).values())
    if len(train) < MIN_DAYS:
        return []
    all_events = [e for r in judged.reports for e in r.events]
    start = report.events[0].wall_ms
    days = {d: v for d, v in day_features(all_events).items() if d >= start}
    if not days:
        return []
    x_train = np.asarray(train, dtype=float)
    forest = IsolationForest(n_estimators=cfg.trees, random_state=cfg.seed).fit(x_train)
    floor = float(forest.score_samples(x_train).min())
    keys = sorted(days)
    scores = forest.score_samples(np.asarray([days[d] for d in keys], dtype=float))
    out: list[Anomaly] = []
    for d, score in zip(keys, scores, strict=True):
        # Not above the lowest accepted day: ties count, because a perfectly regular
        # history gives the forest nothing to split and every day the same score.
        if score > floor:
            continue
        zs = [
            (name, robust_z(days[d][i], col, feature_floor(name, col)))
            for i, name in enumerate(FEATURES)
            for col in [list(x_train[:, i])]
        ]
        zs.sort(key=lambda kv: -abs(kv[1]))
        if abs(zs[0][1]) < cfg.z_min:
            continue
        drivers = tuple(zs[:3])
        named = ", ".join(f"{n} (z {z:+.1f})" for n, z in drivers)
        out.append(
            Anomaly(
                LEARNED,
                # A day unlike the others is context for the rules' findings, not an
                # alarm of its own: holidays, projects and restarts all make such days.
                "info",
                f"the day starting {_day(d)} is unlike every accepted day of this customer; "
                f"driven by {named}. Legitimate causes look like a holiday, a deadline or "
                "a maintenance day; worth a question only beside another finding",
                judged.instance_id,
                report.digest,
                None,
                d,
                score=float(score),
                drivers=drivers,
            )
        )
    return out


def _day(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).date().isoformat()
