"""Small inline-SVG charts and the burn-down arithmetic behind the dashboards.

Pure functions only: numbers in, an SVG string (or a value) out. No I/O, no clock
(callers pass ``now``), no scripts and no ``style`` attributes in the output, so the
charts render with no network access and under a ``style-src 'self'`` content
security policy.

Invariants:

* every chart is one ``<svg role="img">`` element whose ``<title>`` and ``<desc>``
  say what it shows in words, so a screen reader gets the summary; pages put the
  numbers in a table beside it as well;
* every piece of caller text is XML-escaped, so a meter or customer name can never
  inject markup;
* an empty input draws an explicit "no data" chart rather than failing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape as _html_escape
from typing import Final

#: Colours chosen for at least 4.5:1 contrast against white (WCAG AA for text).
PALETTE: Final = ("#1f5fbf", "#b3261e", "#1b6e35", "#6b3fa0", "#8a4b00", "#00606b")
AXIS: Final = "#4a4a4a"
GRID: Final = "#d9d9d9"
_PAD_LEFT: Final = 56
_PAD_RIGHT: Final = 16
_PAD_TOP: Final = 16
_PAD_BOTTOM: Final = 40


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend and (x, y) points in data units."""

    name: str
    points: tuple[tuple[float, float], ...]
    dashed: bool = False


_XML_INVALID: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def escape(text: str) -> str:
    """Escape for XML text and attributes; drop characters XML 1.0 cannot carry at all."""
    return _html_escape(_XML_INVALID.sub("", text))


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _number(v: float) -> str:
    if v == int(v):
        return f"{int(v):,}"
    return f"{v:,.2f}"


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value`` (> 0)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        top = step * 10.0**exp
        if top >= value * (1 - 1e-12):
            return top
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


def tick_count(top: float, *, integer: bool = False) -> int:
    """How many gridlines (including 0) give round steps up to a :func:`nice_max` top.

    Tops led by 1 or 5 step in fifths, tops led by 2 in quarters; integer data with a
    top of 1 or 2 steps by one, so a seat count never shows a fractional line.
    """
    if integer and top <= 2:
        return int(top) + 1
    lead = round(top / 10.0 ** math.floor(math.log10(top))) if top > 0 else 1
    return 5 if lead == 2 else 6


def _open(width: int, height: int, title: str, desc: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" preserveAspectRatio="xMidYMid meet" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(desc)}</desc>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def _empty(width: int, height: int, title: str) -> str:
    parts = _open(width, height, title, f"{title}: no data yet.")
    parts.append(
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" '
        f'fill="{AXIS}" font-size="14">No data yet</text></svg>'
    )
    return "".join(parts)


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: Callable[[float], str] = _fmt,
    y_max: float | None = None,
    hline: tuple[float, str] | None = None,
    size: tuple[int, int] = (640, 260),
    ticks: int = 5,
    integer: bool = True,
) -> str:
    """Lines over a shared x axis; ``hline`` draws a labelled limit; ``ticks`` x labels.

    ``size`` is the view box, (width, height) in SVG user units.
    """
    width, height = size
    pts = [p for s in series for p in s.points]
    if not pts:
        return _empty(width, height, title)
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    top = max([p[1] for p in pts] + [hline[0] if hline else 0.0, y_max or 0.0])
    top = nice_max(top)
    y_ticks = tick_count(top, integer=integer)
    plot_w = width - _PAD_LEFT - _PAD_RIGHT
    plot_h = height - _PAD_TOP - _PAD_BOTTOM

    def sx(x: float) -> float:
        return _PAD_LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return _PAD_TOP + plot_h - (max(0.0, y) / top) * plot_h

    summary = "; ".join(
        f"{s.name}: {len(s.points)} points"
        + (f", last {_number(s.points[-1][1])} at {x_label(s.points[-1][0])}" if s.points else "")
        for s in series
    )
    if hline is not None:
        summary += f"; {hline[1]}: {_number(hline[0])}"
    parts = _open(width, height, title, f"{title}. {summary}.")
    parts.extend(_axes(width, height, top, y_ticks))
    for i in range(ticks):
        x = x0 + (x1 - x0) * i / max(1, ticks - 1)
        anchor = "start" if i == 0 else "end" if i == ticks - 1 else "middle"
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - _PAD_BOTTOM + 18}" text-anchor="{anchor}" '
            f'fill="{AXIS}" font-size="12">{escape(x_label(x))}</text>'
        )
    if hline is not None:
        y = sy(hline[0])
        parts.append(
            f'<line x1="{_PAD_LEFT}" y1="{y:.1f}" x2="{width - _PAD_RIGHT}" y2="{y:.1f}" '
            f'stroke="{PALETTE[1]}" stroke-width="1.5" stroke-dasharray="2 3"/>'
            f'<text x="{width - _PAD_RIGHT}" y="{y - 4:.1f}" text-anchor="end" '
            f'fill="{PALETTE[1]}" font-size="12">{escape(hline[1])}</text>'
        )
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s.points)
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        parts.append(
            f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}>'
            f"<title>{escape(s.name)}</title></polyline>"
        )
        if len(s.points) == 1:
            x, y = s.points[0]
            parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>')
    parts.extend(_legend([(s.name, s.dashed) for s in series], width, height))
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(
    bars: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = 640,
    height: int = 220,
    max_labels: int = 8,
    integer: bool = True,
) -> str:
    """Vertical bars, one per (label, value); at most ``max_labels`` labels are written."""
    if not bars:
        return _empty(width, height, title)
    top = nice_max(max(v for _, v in bars))
    ticks = tick_count(top, integer=integer)
    plot_w = width - _PAD_LEFT - _PAD_RIGHT
    plot_h = height - _PAD_TOP - _PAD_BOTTOM
    slot = plot_w / len(bars)
    peak_label, peak = max(bars, key=lambda b: b[1])
    desc = f"{title}. {len(bars)} bars; highest {_number(peak)} at {peak_label}."
    parts = _open(width, height, title, desc)
    parts.extend(_axes(width, height, top, ticks))
    every = max(1, math.ceil(len(bars) / max_labels))
    for i, (label, value) in enumerate(bars):
        h = max(0.0, value) / top * plot_h
        x = _PAD_LEFT + i * slot + slot * 0.15
        parts.append(
            f'<rect x="{x:.1f}" y="{_PAD_TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{escape(label)}: '
            f"{_number(value)}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + slot * 0.35:.1f}" y="{height - _PAD_BOTTOM + 18}" '
                f'text-anchor="middle" fill="{AXIS}" font-size="12">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def _axes(width: int, height: int, top: float, ticks: int) -> list[str]:
    plot_h = height - _PAD_TOP - _PAD_BOTTOM
    out = []
    for i in range(ticks):
        value = top * i / max(1, ticks - 1)
        y = _PAD_TOP + plot_h - plot_h * i / max(1, ticks - 1)
        out.append(
            f'<line x1="{_PAD_LEFT}" y1="{y:.1f}" x2="{width - _PAD_RIGHT}" y2="{y:.1f}" '
            f'stroke="{GRID}" stroke-width="1"/>'
            f'<text x="{_PAD_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{AXIS}" '
            f'font-size="12">{escape(_number(value))}</text>'
        )
    out.append(
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" x2="{width - _PAD_RIGHT}" '
        f'y2="{_PAD_TOP + plot_h}" stroke="{AXIS}" stroke-width="1"/>'
    )
    return out


def _legend(names: Sequence[tuple[str, bool]], width: int, height: int) -> list[str]:
    out = []
    x = float(_PAD_LEFT)
    y = height - 8
    for i, (name, dashed) in enumerate(names):
        colour = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        out.append(
            f'<line x1="{x:.0f}" y1="{y - 4}" x2="{x + 18:.0f}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="2"{dash}/><text x="{x + 22:.0f}" y="{y}" fill="{AXIS}" '
            f'font-size="12">{escape(name)}</text>'
        )
        x += 30 + 7 * len(name)
        if x > width - 60:
            break
    return out


# ----------------------------------------------------------------- burn-down
@dataclass(frozen=True)
class Projection:
    """Where a meter is heading: units per day over the recent window and when it runs out.

    ``exhausts_at`` is ``None`` when the meter has no limit or is not being used up.
    """

    rate_per_day: float
    exhausts_at: datetime | None
    exhausted: bool


def project_exhaustion(
    samples: Sequence[tuple[datetime, int]],
    limit: int | None,
    now: datetime,
    *,
    window: timedelta = timedelta(days=7),
) -> Projection:
    """Extrapolate the recent rate of a cumulative counter to the time it reaches ``limit``.

    ``samples`` are (time, used so far) pairs of one period, in any order; samples after
    ``now`` are ignored. The rate is the growth over the last ``window`` (or since the
    first sample, if that is later) divided by its length: the counter's value at the
    window's start is the last sample at or before it, so a quiet week shows as a slow
    rate and one burst counts once. A meter already at its limit is exhausted at its
    first sample at or over the limit.
    """
    pts = sorted((t, u) for t, u in samples if t <= now)
    if not pts:
        return Projection(0.0, None, False)
    rate = recent_rate(pts, now, window)
    if limit is not None:
        over = [t for t, u in pts if u >= limit]
        if over:
            return Projection(rate, over[0], True)
    if limit is None or rate <= 0:
        return Projection(rate, None, False)
    last_t, last_u = pts[-1]
    days = (limit - last_u) / rate
    if days > 365 * 100:
        return Projection(rate, None, False)
    return Projection(rate, last_t + timedelta(days=days), False)


def recent_rate(pts: Sequence[tuple[datetime, int]], now: datetime, window: timedelta) -> float:
    """Units per day over ``[max(now - window, first sample), last sample]`` of sorted ``pts``."""
    start = max(now - window, pts[0][0])
    before = [u for t, u in pts if t <= start]
    base = max(before) if before else pts[0][1]
    last_t, last_u = pts[-1]
    span = (last_t - start).total_seconds() / 86_400
    if span <= 0:
        return 0.0
    return max(0.0, (last_u - base) / span)


def daily_used(
    samples: Sequence[tuple[datetime, int]], start: date, end: date
) -> list[tuple[date, int]]:
    """Used at the end of each day from ``start`` to ``end`` (inclusive).

    A day without a sample carries the previous day's value forward (a cumulative
    counter does not fall), starting from 0 before the first sample.
    """
    if end < start:
        return []
    by_day: dict[date, int] = {}
    for t, u in samples:
        d = t.astimezone(UTC).date()
        by_day[d] = max(by_day.get(d, 0), u)
    out = []
    used = 0
    for t, u in sorted(samples):
        if t.astimezone(UTC).date() < start:
            used = max(used, u)
    day = start
    while day <= end:
        used = max(used, by_day.get(day, used))
        out.append((day, used))
        day += timedelta(days=1)
    return out


def burndown_chart(
    days: Sequence[tuple[date, int]],
    limit: int | None,
    projection: Projection | None,
    *,
    title: str,
    period_end: date | None = None,
) -> str:
    """Remaining units per day (used, if there is no limit) with the projected line."""
    if not days:
        return _empty(640, 260, title)

    def x(d: date) -> float:
        return float(d.toordinal())

    def label(v: float) -> str:
        return date.fromordinal(round(v)).strftime("%d %b")

    if limit is None:
        s = Series("used", tuple((x(d), float(u)) for d, u in days))
        return line_chart([s], title=title, x_label=label)
    actual = Series("remaining", tuple((x(d), float(max(0, limit - u))) for d, u in days))
    lines = [actual]
    if projection is not None and projection.rate_per_day > 0 and not projection.exhausted:
        last_d, last_u = days[-1]
        remaining = max(0, limit - last_u)
        end = projection.exhausts_at.date() if projection.exhausts_at else None
        if period_end is not None and (end is None or end > period_end):
            end = period_end
        if end is not None and end > last_d:
            left = max(0.0, remaining - projection.rate_per_day * (end - last_d).days)
            lines.append(
                Series("projected", ((x(last_d), float(remaining)), (x(end), left)), dashed=True)
            )
    return line_chart(lines, title=title, x_label=label, y_max=float(limit))


__all__ = [
    "PALETTE",
    "Projection",
    "Series",
    "bar_chart",
    "burndown_chart",
    "daily_used",
    "line_chart",
    "nice_max",
    "tick_count",
    "project_exhaustion",
    "recent_rate",
]
