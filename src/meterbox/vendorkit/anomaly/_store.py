"""Adapter: per-instance histories from the vendor store's tables (read-only).

Ingest stores everything the detectors read: usage and seat events (the billing
tables), every other new record with its wall and monotonic time (``ledger_events``),
and per report its creation time, receive time and the licenses' reporting interval
(``report_meta``), read through :mod:`meterbox.vendorkit._db.queries` in microseconds.
This module turns them
back into :class:`InstanceHistory` for two callers: ingest, which judges the report it
is writing (inside its own transaction, so the report's rows are visible), and
``meterbox vendor anomalies``.

Invariants:

* rejected reports are not history: their rows were rolled back, and their report rows
  are skipped;
* cost is bounded: usage reaches the detectors summed per minute and meter (an
  :class:`Event` with ``count`` and ``meter``), so a million-record report is at most
  one event per minute of its span and meter; ingest reads only the window of
  :mod:`meterbox.vendorkit.anomaly._window` (one truth with the evaluation);
* the store keeps microseconds; the detectors work in milliseconds, so every time is
  divided by 1000 here, exactly once;
* leases checked out before the window and ended inside it are named in
  ``known_leases``, so a bounded window never looks like a lost checkout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import Connection

from meterbox.vendorkit._db import queries as q
from meterbox.vendorkit._db.store import VendorStore
from meterbox.vendorkit.anomaly._features import (
    CHECKOUT,
    DAY_MS,
    EXPIRE,
    RELEASE,
    RENEW,
    USAGE,
    Event,
    InstanceHistory,
    ReportView,
    event_from_record,
)
from meterbox.vendorkit.anomaly._window import INGEST_REPORTS, window_since

# A removal by the site administrator ends a lease like a release.
_SEAT_KINDS: Final = {
    "checkout": CHECKOUT,
    "renew": RENEW,
    "release": RELEASE,
    "remove": RELEASE,
    "expire": EXPIRE,
    # A borrowed seat is seat time like a checkout; its early return ends it.
    "borrow": CHECKOUT,
    "return": RELEASE,
}
#: Report statuses that are not accepted history.
_REJECTED: Final = frozenset({"rejected", "unusable"})


@dataclass(frozen=True, slots=True)
class Pending:
    """The report ingest is judging: its rows are written, its report row is not yet."""

    digest: str
    from_seq: int
    head_seq: int
    created_ms: int
    received_ms: int
    report_every_days: int | None
    grace_days: int


@dataclass(frozen=True, slots=True)
class _Row:
    digest: str
    from_seq: int
    head_seq: int
    created_ms: int
    received_ms: int
    every_days: int | None
    grace_days: int


def _report_rows(conn: Connection, instance_id: str) -> list[_Row]:
    out = []
    for digest, lo, hi, ingested_us, status, created, received, every, grace in q.report_rows(
        conn, instance_id
    ):
        if status in _REJECTED or hi < 0:
            continue
        received_ms = (int(received) if received is not None else int(ingested_us)) // 1000
        out.append(
            _Row(
                digest,
                int(lo),
                int(hi),
                int(created) // 1000 if created is not None else 0,
                received_ms,
                None if every is None else int(every),
                int(grace or 0),
            )
        )
    return out


def instance_history(
    conn: Connection,
    instance_id: str,
    *,
    license_id: str,
    customer: str = "",
    pending: Pending | None = None,
    window: bool = False,
    first_wall_ms: int | None = None,
    report_every_ms: int | None = None,
) -> InstanceHistory:
    """One instance's accepted reports (plus ``pending``, judged last).

    ``window``: read only what ingest judges the last report against
    (:mod:`meterbox.vendorkit.anomaly._window`: the last
    :data:`~meterbox.vendorkit.anomaly._window.INGEST_REPORTS` reports, records from
    :func:`~meterbox.vendorkit.anomaly._window.window_since` of ``first_wall_ms``, the
    judged report's earliest new record); the same history as
    :func:`~meterbox.vendorkit.anomaly._window.ingest_view` of the whole one.
    ``report_every_ms`` overrides the interval the licenses stated.
    """
    rows = _report_rows(conn, instance_id)
    if pending is not None:
        rows = [r for r in rows if r.digest != pending.digest]
        rows.append(
            _Row(
                pending.digest,
                pending.from_seq,
                pending.head_seq,
                pending.created_ms,
                pending.received_ms,
                pending.report_every_days,
                pending.grace_days,
            )
        )
    if not rows:
        return InstanceHistory(instance_id, license_id, customer, report_every_ms)
    since_ms = None
    if window:
        rows = rows[-(INGEST_REPORTS + 1) :]
        since_ms = window_since(first_wall_ms, [r.created_ms for r in rows[:-1]])
    lo = min(r.from_seq for r in rows)
    hi = max(r.head_seq for r in rows)
    since_us = None if since_ms is None else since_ms * 1000
    events = _events(conn, instance_id, lo, hi, since_us)
    reports: list[ReportView] = []
    done = lo - 1
    ordered = sorted(events, key=lambda e: e.seq)
    i = 0
    for row in rows:
        start, end = max(row.from_seq, done + 1), row.head_seq
        while i < len(ordered) and ordered[i].seq < start:
            i += 1
        j = i
        while j < len(ordered) and ordered[j].seq <= end:
            j += 1
        reports.append(
            ReportView(
                row.digest,
                row.created_ms,
                row.received_ms,
                row.from_seq,
                row.head_seq,
                tuple(ordered[i:j]),
            )
        )
        i, done = j, max(done, end)
    last = rows[-1]
    every = report_every_ms
    if every is None and last.every_days is not None:
        every = last.every_days * DAY_MS
    ended = {e.lease for e in ordered if e.kind in (RENEW, RELEASE, EXPIRE) and e.lease}
    return InstanceHistory(
        instance_id,
        license_id,
        customer,
        every,
        last.grace_days * DAY_MS,
        tuple(reports),
        frozenset(
            q.checked_out_before(conn, instance_id, ended, ordered[0].seq if ordered else lo)
        ),
    )


def _events(
    conn: Connection, instance_id: str, lo: int, hi: int, since_us: int | None
) -> list[Event]:
    out = [
        Event(seq, USAGE, minute * 60_000, amount=amount, count=n, meter=meter)
        for seq, minute, meter, n, amount in q.usage_per_minute(conn, instance_id, lo, hi, since_us)
    ]
    for seq, t_us, kind, lease, feature, client in q.seat_events(
        conn, instance_id, lo, hi, since_us
    ):
        mapped = _SEAT_KINDS.get(kind)
        if mapped is not None:
            # Feature and client as the ledger states them: on the record taking the seat.
            f, c = (feature, client) if mapped == CHECKOUT else ("", "")
            out.append(Event(seq, mapped, t_us // 1000, lease=lease or "", feature=f, client=c))
    for seq, kind, wall, mono, payload in q.ledger_events(conn, instance_id, lo, hi, since_us):
        out.append(event_from_record(seq, kind, wall // 1000, mono // 1000, _payload(payload)))
    return out


def _payload(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def histories(
    store: VendorStore,
    *,
    customer: str | None = None,
    report_every_ms: int | None = None,
) -> list[InstanceHistory]:
    """Every instance (of one customer, or all), its accepted reports in ingest order.

    ``report_every_ms`` overrides the reporting interval the licenses stated.
    """
    with store.engine.connect() as conn:
        owners = q.license_owners(conn, customer)
        inst = q.instances_of(conn, owners)
        return [
            instance_history(
                conn,
                instance_id,
                license_id=license_id,
                customer=owners.get(license_id, ""),
                report_every_ms=report_every_ms,
            )
            for instance_id, license_id in inst
        ]
