"""Adapter: per-instance histories from the vendor store's tables (read-only).

Ingest stores everything the detectors read: usage and seat events (the billing
tables), every other new record with its wall and monotonic time (``ledger_events``),
and per report its creation time, receive time and the licenses' reporting interval
(``report_meta``), all in :mod:`meterbox.vendorkit._ingest_store`. This module turns them
back into :class:`InstanceHistory` for two callers: ingest, which judges the report it
is writing (inside its own transaction, so the report's rows are visible), and
``meterbox vendor anomalies``.

Invariants:

* rejected reports are not history: their rows were rolled back, and their report rows
  are skipped;
* cost is bounded: usage reaches the detectors summed per minute (an :class:`Event`
  with ``count``), so a million-record report is at most one event per minute of its
  span; ingest reads at most :data:`INGEST_REPORTS` reports and records dated at most
  :data:`INGEST_WINDOW_MS` before the judged report's earliest new record;
* leases checked out before the window and ended inside it are named in
  ``known_leases``, so a bounded window never looks like a lost checkout.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meterbox.vendorkit._ingest_store import ensure_tables, ledger_events_table, report_meta_table
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
from meterbox.vendorkit.store import (
    VendorStore,
    instances_table,
    licenses_table,
    reports_table,
    seat_events_table,
    usage_table,
)

#: Reports before the judged one that ingest reads (a quarter of weekly reports).
INGEST_REPORTS: Final = 12
#: Wall time before the judged report's first record that ingest reads.
INGEST_WINDOW_MS: Final = 8 * 7 * DAY_MS
_MINUTE_US: Final = 60_000_000

_SEAT_KINDS: Final = {"checkout": CHECKOUT, "renew": RENEW, "release": RELEASE, "expire": EXPIRE}
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


def _micros(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    return sa.type_coerce(column, sa.BigInteger)


def _report_rows(conn: Connection, instance_id: str) -> list[_Row]:
    r, m = reports_table, report_meta_table
    query = (
        sa.select(
            r.c.report_digest,
            r.c.from_seq,
            r.c.head_seq,
            _micros(r.c.ingested_at),
            r.c.status,
            m.c.created_ms,
            m.c.received_ms,
            m.c.report_every_days,
            m.c.grace_days,
        )
        .outerjoin(m, m.c.report_digest == r.c.report_digest)
        .where(r.c.instance_id == instance_id)
        .order_by(r.c.ingested_at, r.c.head_seq)
    )
    out = []
    for digest, lo, hi, ingested_us, status, created, received, every, grace in conn.execute(query):
        if status in _REJECTED or hi < 0:
            continue
        received_ms = int(received) if received is not None else int(ingested_us) // 1000
        out.append(
            _Row(
                digest,
                int(lo),
                int(hi),
                int(created) if created is not None else 0,
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
    max_reports: int | None = None,
    since_ms: int | None = None,
    report_every_ms: int | None = None,
) -> InstanceHistory:
    """One instance's accepted reports (the last ``max_reports``, plus ``pending``).

    ``since_ms`` drops records dated (site wall clock) before it; ``report_every_ms``
    overrides the interval the licenses stated.
    """
    rows = _report_rows(conn, instance_id)
    if pending is not None:
        rows = [r for r in rows if r.digest != pending.digest]
        if max_reports is not None:
            rows = rows[-max_reports:]
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
    elif max_reports is not None:
        rows = rows[-(max_reports + 1) :]
    if not rows:
        return InstanceHistory(instance_id, license_id, customer, report_every_ms)
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
        frozenset(_checked_out_before(conn, instance_id, ended, ordered[0].seq if ordered else lo)),
    )


def _events(
    conn: Connection, instance_id: str, lo: int, hi: int, since_us: int | None
) -> list[Event]:
    out: list[Event] = []
    u = usage_table
    ts = _micros(u.c.ts)
    minute = (ts // _MINUTE_US).label("minute")
    signed = sa.case((u.c.kind == "decrement", -u.c.amount), else_=u.c.amount)
    query = sa.select(sa.func.min(u.c.seq), minute, sa.func.count(), sa.func.sum(signed)).where(
        u.c.instance_id == instance_id, u.c.seq >= lo, u.c.seq <= hi
    )
    if since_us is not None:
        query = query.where(ts >= since_us)
    for seq, m, n, amount in conn.execute(query.group_by(minute)):
        out.append(Event(int(seq), USAGE, int(m) * 60_000, amount=int(amount or 0), count=int(n)))
    s = seat_events_table
    sts = _micros(s.c.ts)
    query2 = sa.select(s.c.seq, sts, s.c.kind, s.c.lease_id).where(
        s.c.instance_id == instance_id, s.c.seq >= lo, s.c.seq <= hi
    )
    if since_us is not None:
        query2 = query2.where(sts >= since_us)
    for seq, t_us, kind, lease in conn.execute(query2):
        mapped = _SEAT_KINDS.get(kind)
        if mapped is not None:
            out.append(Event(int(seq), mapped, int(t_us) // 1000, lease=lease or ""))
    e = ledger_events_table
    query3 = sa.select(e.c.seq, e.c.kind, e.c.wall_ms, e.c.mono_ms, e.c.payload).where(
        e.c.instance_id == instance_id, e.c.seq >= lo, e.c.seq <= hi
    )
    if since_us is not None:
        query3 = query3.where(e.c.wall_ms >= since_us // 1000)
    for seq, kind, wall, mono, payload in conn.execute(query3):
        out.append(event_from_record(int(seq), kind, int(wall), int(mono), _payload(payload)))
    return out


def _payload(text: str) -> Mapping[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _checked_out_before(
    conn: Connection, instance_id: str, leases: Iterable[str], before_seq: int
) -> set[str]:
    ids = sorted(set(leases))
    found: set[str] = set()
    t = seat_events_table
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = sa.select(t.c.lease_id).where(
            t.c.instance_id == instance_id,
            t.c.kind == "checkout",
            t.c.seq < before_seq,
            t.c.lease_id.in_(chunk),
        )
        found.update(str(r[0]) for r in conn.execute(query))
    return found


def histories(
    store: VendorStore,
    *,
    customer: str | None = None,
    report_every_ms: int | None = None,
) -> list[InstanceHistory]:
    """Every instance (of one customer, or all), its accepted reports in ingest order.

    ``report_every_ms`` overrides the reporting interval the licenses stated.
    """
    lic_q = sa.select(licenses_table.c.license_id, licenses_table.c.customer)
    if customer is not None:
        lic_q = lic_q.where(licenses_table.c.customer == customer)
    ensure_tables(store.engine)
    with store.engine.connect() as conn:
        owners = {r.license_id: r.customer for r in conn.execute(lic_q)}
        inst = conn.execute(
            sa.select(instances_table.c.instance_id, instances_table.c.license_id)
            .where(instances_table.c.license_id.in_(list(owners)))
            .order_by(instances_table.c.instance_id)
        ).all()
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
