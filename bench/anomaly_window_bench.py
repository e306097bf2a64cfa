"""What judging one report through the ingest window costs (ADR 0038).

Builds the worst case the window admits for a site that meters every minute: three
meters with a usage record every minute of every day (what a round-the-clock 50-seat
site reaches, one event per minute and meter after the store's summing), a heartbeat
every 10 minutes, and every seat checked out and released once a day. Two reporting
intervals, twelve reports each, are cut by :func:`ingest_view` (eight weeks of a
weekly reporter; eight reports, about 35 weeks, of a monthly one; and, for the
ratio, the four reports the window kept of a monthly one before) and judged by
:func:`detect` as ingest calls it (no clock checks). Rounds alternate between the two;
prints events judged, the median seconds of each, their ratio, and the peak memory
the judging allocated (tracemalloc, one extra round each).

    .venv/bin/python bench/anomaly_window_bench.py [--rounds 3] [--seats 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Sequence

from meterbox.vendorkit.anomaly import (
    DAY_MS,
    Event,
    InstanceHistory,
    ReportView,
    _window,
    detect,
    ingest_view,
)
from meterbox.vendorkit.anomaly._features import CHECKOUT, HEARTBEAT, RELEASE, USAGE

MIN = 60_000
METERS = ("solve", "render", "export")


def history(every_days: int, reports: int, seats: int) -> InstanceHistory:
    """``reports`` reports ``every_days`` apart, saturated as the module says."""
    views = []
    seq = 1
    t = 0
    for r in range(reports):
        start_seq = seq
        events: list[Event] = []
        for day in range(every_days):
            d0 = t + day * DAY_MS
            for s in range(seats):
                events.append(Event(seq, CHECKOUT, d0 + s * 1000, lease=f"r{r}d{day}s{s}"))
                seq += 1
            for minute in range(1, 1440):
                at = d0 + minute * MIN
                for i, meter in enumerate(METERS):
                    events.append(
                        Event(seq, USAGE, at, amount=10 - 3 * i, count=seats, meter=meter)
                    )
                    seq += 1
                if minute % 10 == 0:
                    events.append(Event(seq, HEARTBEAT, at, at, in_use=seats))
                    seq += 1
            for s in range(seats):
                end = d0 + DAY_MS - 1000 + s
                events.append(Event(seq, RELEASE, end, lease=f"r{r}d{day}s{s}"))
                seq += 1
        t += every_days * DAY_MS
        views.append(ReportView(f"r{r}", t, t + 60_000, start_seq, seq - 1, tuple(events)))
    return InstanceHistory(
        "bench", "lic", report_every_ms=every_days * DAY_MS, reports=tuple(views)
    )


def judge(h: InstanceHistory) -> float:
    t0 = time.perf_counter()
    detect(h, clock=False)
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seats", type=int, default=50)
    args = ap.parse_args(argv)
    monthly = history(30, 12, args.seats)
    views = {
        "weekly": ingest_view(history(7, 12, args.seats)),
        "monthly": ingest_view(monthly),
    }
    # The window before ADR 0038 kept four reports of a monthly reporter.
    _window.INGEST_MIN_REPORTS = 4  # type: ignore[misc]
    views["monthly, four reports (before)"] = ingest_view(monthly)
    times: dict[str, list[float]] = {k: [] for k in views}
    for _ in range(args.rounds):
        for name, h in views.items():
            times[name].append(judge(h))
    peaks = {}
    for name, h in views.items():
        tracemalloc.start()
        judge(h)
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    base = statistics.median(times["weekly"])
    print("| reporter | events judged | median s | ratio to weekly | peak MiB |")
    print("|---|---|---|---|---|")
    for name, h in views.items():
        med = statistics.median(times[name])
        n = sum(len(r.events) for r in h.reports)
        print(f"| {name} | {n:,} | {med:.2f} | {med / base:.2f} | {peaks[name] / 2**20:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
