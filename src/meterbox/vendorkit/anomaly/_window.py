"""The history ingest judges a report against: its bounds, one truth for two readers.

Ingest reads an instance's history from the vendor store with these bounds in SQL
(:func:`meterbox.vendorkit.anomaly._store.instance_history`, so a long-lived site costs
no more to judge than a young one); the evaluation (``bench/anomaly_eval.py``) holds
whole simulated histories in memory and cuts them with :func:`ingest_view`, so what
it measures is what ingest sees. Both take the lower time bound from
:func:`window_since`. Pure: no I/O, no clock.

The bounds (ADR 0038):

* at most :data:`INGEST_REPORTS` accepted reports before the judged one;
* of those, records dated (site wall clock) from :data:`INGEST_WINDOW_MS` before the
  judged report's earliest new record, or every record of the last
  :data:`INGEST_MIN_REPORTS` reports, whichever reaches further (time bounds weekly
  reporters, the count monthly ones, so both are judged on about eight reports);
* the bound falls on a whole minute, because usage reaches the detectors summed per
  minute: a minute is kept or dropped whole;
* the judged report keeps every record (the bound is at or before its earliest);
* leases checked out before the kept records and ended inside them are named in
  ``known_leases``, so a bounded window never looks like a lost checkout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Final

from meterbox.vendorkit.anomaly._features import (
    CHECKOUT,
    DAY_MS,
    EXPIRE,
    RELEASE,
    RENEW,
    InstanceHistory,
)

#: Reports before the judged one that ingest reads (a quarter of weekly reports).
INGEST_REPORTS: Final = 12
#: Wall time before the judged report's first record that ingest reads...
INGEST_WINDOW_MS: Final = 8 * 7 * DAY_MS
#: ...or, when longer, the records of this many accepted reports before it: eight
#: weeks hold eight weekly reports but only two monthly ones, and a span of
#: ``rate_pool_reports`` (4) reports wants as many before it (ADR 0038).
INGEST_MIN_REPORTS: Final = 8
#: Usage reaches the detectors summed per minute; the bound is a whole minute.
_MINUTE_MS: Final = 60_000


def window_since(first_wall_ms: int | None, prior_created_ms: Sequence[int]) -> int | None:
    """The earliest wall time (ms) of a record ingest reads, or ``None`` for no bound.

    ``first_wall_ms``: the judged report's earliest new record (``None``: it has none,
    and nothing is cut). ``prior_created_ms``: the creation times (site clock) of the
    accepted reports before it, oldest first. A report's records follow the export of
    the report before it, so keeping the last ``INGEST_MIN_REPORTS`` reports whole
    means starting at the creation of the report before them; with that few reports
    there is no bound at all.
    """
    if first_wall_ms is None or len(prior_created_ms) <= INGEST_MIN_REPORTS:
        return None
    since = min(first_wall_ms - INGEST_WINDOW_MS, prior_created_ms[-INGEST_MIN_REPORTS - 1])
    return since - since % _MINUTE_MS


def ingest_view(h: InstanceHistory, first_wall_ms: int | None = None) -> InstanceHistory:
    """``h`` as ingest reads it from the store when judging its last report.

    ``first_wall_ms`` is the judged report's earliest new record as ingest saw it
    while reading the report; by default the earliest record the detectors are given
    (ingest also counts records they are not given, such as epoch and state records,
    which a server writes beside ones they are).
    """
    if not h.reports:
        return h
    rows = h.reports[-(INGEST_REPORTS + 1) :]
    judged = rows[-1]
    if first_wall_ms is None:
        first_wall_ms = min((e.wall_ms for e in judged.events), default=None)
    since = window_since(first_wall_ms, [r.created_ms for r in rows[:-1]])
    kept = tuple(
        r if since is None else replace(r, events=tuple(e for e in r.events if e.wall_ms >= since))
        for r in rows
    )
    events = [e for r in kept for e in r.events]
    first_seq = min((e.seq for e in events), default=min(r.from_seq for r in kept))
    ended = {e.lease for e in events if e.kind in (RENEW, RELEASE, EXPIRE) and e.lease}
    before = {e.lease for e in h.events if e.kind == CHECKOUT and e.seq < first_seq}
    return replace(h, reports=kept, known_leases=frozenset(ended & (before | h.known_leases)))
