"""Read-only queries over the vendor store for billing, the anomaly detectors and the dashboard.

Each function takes an open connection and returns plain tuples; every time is integer
microseconds (wall times since the Unix epoch, UTC). Turning them into the callers'
own units and types is the callers' business. Nothing here writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meterbox.compat.rules import CLIENT_PREFIX
from meterbox.vendorkit._db.schema import (
    findings_table,
    instances_table,
    ledger_events_table,
    licenses_table,
    micros,
    report_meta_table,
    report_spans_table,
    reports_table,
    seat_events_table,
    topups_table,
    usage_table,
)

_IN_CHUNK: Final = 500
_MINUTE_US: Final = 60_000_000


def _signed_amount() -> sa.ColumnElement[int]:
    t = usage_table
    return sa.case((t.c.kind == "decrement", -t.c.amount), else_=t.c.amount)


# ------------------------------------------------------------------ billing
def usage_sums(
    conn: Connection,
    *,
    start_us: int | None,
    end_us: int,
    license_ids: Sequence[str] | None,
    kind: str | None = None,
) -> dict[tuple[str, str], int]:
    """Net billed units (increments minus decrements) per (license, meter), ts in [start, end).

    With ``kind`` (``increment`` or ``decrement``), the plain units of that kind only.
    The database sums per report, where ingest's bounds keep every sum inside a
    signed 64-bit integer (``MAX_AMOUNT`` times the records a report may hold); the
    reports' sums are added here, in Python, where nothing overflows.
    """
    t = usage_table
    ts = micros(t.c.ts)
    amount = _signed_amount() if kind is None else t.c.amount
    # Only the billed copy of a usage event redelivered to another node (docs/adr/0033).
    query = sa.select(t.c.license_id, t.c.meter, sa.func.sum(amount)).where(
        ts < end_us, t.c.billed == sa.true()
    )
    if kind is not None:
        query = query.where(t.c.kind == kind)
    if start_us is not None:
        query = query.where(ts >= start_us)
    if license_ids is not None:
        query = query.where(t.c.license_id.in_(list(license_ids)))
    query = query.group_by(t.c.license_id, t.c.meter, t.c.report_digest)
    out: dict[tuple[str, str], int] = {}
    for lic, meter, total in conn.execute(query):
        out[lic, meter] = out.get((lic, meter), 0) + int(total or 0)
    return out


def seat_rows(
    conn: Connection, *, end_us: int, license_ids: Sequence[str] | None, start_us: int | None = None
) -> list[tuple[str, int, str, str, int, str, str | None]]:
    """(instance, seq, license, feature, ts_us, kind, lease) in [``start``, ``end``), by
    instance, seq."""
    t = seat_events_table
    ts = micros(t.c.ts)
    query = sa.select(
        t.c.instance_id, t.c.seq, t.c.license_id, t.c.feature, ts, t.c.kind, t.c.lease_id
    ).where(ts < end_us)
    if start_us is not None:
        query = query.where(ts >= start_us)
    if license_ids is not None:
        query = query.where(t.c.license_id.in_(list(license_ids)))
    query = query.order_by(t.c.instance_id, t.c.seq)
    return [tuple(r) for r in conn.execute(query)]


def latest_report_times(conn: Connection) -> dict[str, int]:
    """Per instance, the creation time (us) of its latest accepted report."""
    m, r = report_meta_table, reports_table
    query = (
        sa.select(m.c.instance_id, sa.func.max(m.c.created_us))
        .join(r, r.c.report_digest == m.c.report_digest)
        .where(r.c.status.in_(["accepted", "accepted_with_findings"]))
        .group_by(m.c.instance_id)
    )
    return {inst: int(created) for inst, created in conn.execute(query)}


def licenses(conn: Connection, customer: str | None) -> list[tuple[str, str, bytes]]:
    """(license, customer, document) ordered by customer, license."""
    t = licenses_table
    query = sa.select(t.c.license_id, t.c.customer, t.c.document).order_by(
        t.c.customer, t.c.license_id
    )
    if customer is not None:
        query = query.where(t.c.customer == customer)
    return [(r[0], r[1], r[2]) for r in conn.execute(query)]


def topups(conn: Connection, end_us: int) -> list[tuple[str, str, int, int]]:
    """(license, meter, units, issued_us) of top-ups issued before ``end``."""
    t = topups_table
    issued = micros(t.c.issued)
    query = sa.select(t.c.license_id, t.c.meter, t.c.units, issued).where(issued < end_us)
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in conn.execute(query)]


def findings_touching(
    conn: Connection, *, start_us: int, end_us: int
) -> list[tuple[str, str, str, str, str, str, int | None]]:
    """(digest, instance, licenses, code, severity, message, seq) of reports in the period."""
    s, f = report_spans_table, findings_table
    query = (
        sa.select(
            s.c.report_digest,
            f.c.instance_id,
            s.c.license_ids,
            f.c.code,
            f.c.severity,
            f.c.message,
            f.c.seq,
        )
        .join(f, f.c.report_digest == s.c.report_digest)
        .where(s.c.first_wall_us < end_us, s.c.last_wall_us >= start_us)
        .order_by(f.c.id)
    )
    return [tuple(r) for r in conn.execute(query)]


def all_findings(conn: Connection) -> list[tuple[str, str, str, str, str, str, str, int | None]]:
    """(digest, instance, status, licenses, code, severity, message, seq) of every report.

    Every stored finding, rejected and unusable reports included, in the order stored;
    ``licenses`` is the comma-separated list the report carried (empty if unknown).
    """
    f, r, s = findings_table, reports_table, report_spans_table
    query = (
        sa.select(
            f.c.report_digest,
            f.c.instance_id,
            sa.func.coalesce(r.c.status, ""),
            sa.func.coalesce(s.c.license_ids, ""),
            f.c.code,
            f.c.severity,
            f.c.message,
            f.c.seq,
        )
        .outerjoin(r, r.c.report_digest == f.c.report_digest)
        .outerjoin(s, s.c.report_digest == f.c.report_digest)
        .order_by(f.c.id)
    )
    return [tuple(row) for row in conn.execute(query)]


# ------------------------------------------------------------------ anomaly detectors
def report_rows(
    conn: Connection, instance_id: str
) -> list[tuple[str, int, int, int, str, int | None, int | None, int | None, int | None]]:
    """One instance's reports in ingest order with their metadata, when it was stored.

    (digest, from_seq, head_seq, ingested_us, status, created_us, received_us,
    report_every_days, grace_days).
    """
    r, m = reports_table, report_meta_table
    query = (
        sa.select(
            r.c.report_digest,
            r.c.from_seq,
            r.c.head_seq,
            micros(r.c.ingested_at),
            r.c.status,
            m.c.created_us,
            m.c.received_us,
            m.c.report_every_days,
            m.c.grace_days,
        )
        .outerjoin(m, m.c.report_digest == r.c.report_digest)
        .where(r.c.instance_id == instance_id)
        .order_by(r.c.ingested_at, r.c.head_seq)
    )
    return [tuple(row) for row in conn.execute(query)]


def usage_per_minute(
    conn: Connection, instance_id: str, lo: int, hi: int, since_us: int | None
) -> list[tuple[int, int, str, int, int]]:
    """(first seq, minute index since the epoch, meter, records, net units), seqs in [lo, hi].

    One row per minute and meter, so the detectors judge each meter against its own
    history (a whole small meter dropped is not hidden in the total). Summed per
    report in SQL (bounded, see :func:`usage_sums`) and across reports here.
    """
    u = usage_table
    ts = micros(u.c.ts)
    minute = (ts // _MINUTE_US).label("minute")
    query = sa.select(
        sa.func.min(u.c.seq), minute, u.c.meter, sa.func.count(), sa.func.sum(_signed_amount())
    ).where(u.c.instance_id == instance_id, u.c.seq >= lo, u.c.seq <= hi)
    if since_us is not None:
        query = query.where(ts >= since_us)
    per_minute: dict[tuple[int, str], tuple[int, int, int]] = {}
    grouped = query.group_by(minute, u.c.meter, u.c.report_digest)
    for seq, m, meter, n, amount in conn.execute(grouped):
        key = (int(m), str(meter))
        first, count, units = per_minute.get(key, (int(seq), 0, 0))
        per_minute[key] = (min(first, int(seq)), count + int(n), units + int(amount or 0))
    return [
        (first, m, meter, n, units) for (m, meter), (first, n, units) in sorted(per_minute.items())
    ]


def seat_events(
    conn: Connection, instance_id: str, lo: int, hi: int, since_us: int | None
) -> list[tuple[int, int, str, str | None, str, str]]:
    """(seq, ts_us, kind, lease, feature, client) of one instance's seat events with seqs
    in [lo, hi]."""
    s = seat_events_table
    ts = micros(s.c.ts)
    query = sa.select(s.c.seq, ts, s.c.kind, s.c.lease_id, s.c.feature, s.c.client_id).where(
        s.c.instance_id == instance_id, s.c.seq >= lo, s.c.seq <= hi
    )
    if since_us is not None:
        query = query.where(ts >= since_us)
    return [
        (int(seq), int(t), kind, lease, f, c) for seq, t, kind, lease, f, c in conn.execute(query)
    ]


def ledger_events(
    conn: Connection, instance_id: str, lo: int, hi: int, since_us: int | None
) -> list[tuple[int, str, int, int, str]]:
    """(seq, kind, wall_us, mono_us, payload JSON) of one instance's other records."""
    e = ledger_events_table
    query = sa.select(e.c.seq, e.c.kind, e.c.wall_us, e.c.mono_us, e.c.payload).where(
        e.c.instance_id == instance_id, e.c.seq >= lo, e.c.seq <= hi
    )
    if since_us is not None:
        query = query.where(e.c.wall_us >= since_us)
    return [
        (int(seq), kind, int(wall), int(mono), payload)
        for seq, kind, wall, mono, payload in conn.execute(query)
    ]


def machine_activations(conn: Connection) -> dict[str, set[str]]:
    """Per license, the Cryptolens machine codes activated node-locked, from the ledger.

    Replays every stored ``machine.activated``/``machine.deactivated`` record in ledger
    order per instance; codes over 200 characters (not kept in ``ledger_events``)
    count under their record's sequence number.
    """
    e = ledger_events_table
    query = (
        sa.select(e.c.instance_id, e.c.seq, e.c.kind, e.c.payload)
        .where(e.c.kind.in_(("machine.activated", "machine.deactivated")))
        .order_by(e.c.instance_id, e.c.seq)
    )
    out: dict[str, set[str]] = {}
    for instance_id, seq, kind, payload in conn.execute(query):
        try:
            fields = json.loads(payload)
        except ValueError:
            continue
        lic = fields.get("l") if isinstance(fields, dict) else None
        if not isinstance(lic, str):
            continue
        code = fields.get("c")
        code = code if isinstance(code, str) else f"<long code {instance_id[:8]}:{seq}>"
        codes = out.setdefault(lic, set())
        if kind == "machine.activated":
            codes.add(code)
        else:
            codes.discard(code)
    return out


def checked_out_before(
    conn: Connection, instance_id: str, leases: Iterable[str], before_seq: int
) -> set[str]:
    """Those of ``leases`` that one instance checked out at a seq below ``before_seq``."""
    ids = sorted(set(leases))
    found: set[str] = set()
    t = seat_events_table
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        query = sa.select(t.c.lease_id).where(
            t.c.instance_id == instance_id,
            t.c.kind.in_(("checkout", "borrow")),
            t.c.seq < before_seq,
            t.c.lease_id.in_(chunk),
        )
        found.update(str(r[0]) for r in conn.execute(query))
    return found


def license_owners(conn: Connection, customer: str | None) -> dict[str, str]:
    """License id -> customer (of one customer, or all)."""
    query = sa.select(licenses_table.c.license_id, licenses_table.c.customer)
    if customer is not None:
        query = query.where(licenses_table.c.customer == customer)
    return {r.license_id: r.customer for r in conn.execute(query)}


def members_of(conn: Connection, license_id: str) -> list[tuple[str, int | None]]:
    """(instance, acked seq) of every instance with an accepted report of ``license_id``."""
    t = instances_table
    query = (
        sa.select(t.c.instance_id, t.c.acked_seq)
        .where(t.c.license_id == license_id)
        .order_by(t.c.instance_id)
    )
    return [(r[0], None if r[1] is None else int(r[1])) for r in conn.execute(query)]


def member_reports(conn: Connection, license_id: str) -> list[tuple[str, int | None, int | None]]:
    """(instance, creation us of its latest accepted report, acked seq) per member."""
    times = latest_report_times(conn)
    return [(iid, times.get(iid), acked) for iid, acked in members_of(conn, license_id)]


def instances_of(conn: Connection, license_ids: Iterable[str]) -> list[tuple[str, str]]:
    """(instance, license) of every instance reporting one of ``license_ids``."""
    t = instances_table
    query = (
        sa.select(t.c.instance_id, t.c.license_id)
        .where(t.c.license_id.in_(list(license_ids)))
        .order_by(t.c.instance_id)
    )
    return [(r[0], r[1]) for r in conn.execute(query)]


# ------------------------------------------------------------------ dashboard
def instances(conn: Connection) -> list[dict[str, Any]]:
    """Every instance (id, license, first_seen, acked_seq, last_report_at), oldest first."""
    t = instances_table
    query = sa.select(
        t.c.instance_id, t.c.license_id, t.c.first_seen, t.c.acked_seq, t.c.last_report_at
    ).order_by(t.c.first_seen)
    return [r._asdict() for r in conn.execute(query)]


def recent_reports(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The last ``limit`` reports ingested, newest first, every column by name."""
    query = sa.select(reports_table).order_by(reports_table.c.ingested_at.desc()).limit(limit)
    return [r._asdict() for r in conn.execute(query)]


# ------------------------------------------------------------------ enforcement
def instance_usage_net(
    conn: Connection,
    instance_id: str,
    *,
    license_id: str,
    meter: str,
    exclude_digest: str,
    window_us: tuple[int | None, int | None] = (None, None),
    client_id: str | None = None,
    data_objects: bool | None = None,
) -> int:
    """Net units of one instance's (license, meter) stored from other reports.

    Optionally within ``window_us`` [start, end), for one client id, or only for
    data-object clients (``data_objects=True``, client ids ``cryptolens/<id>``) or only
    for the others (``False``).
    Summed per report in SQL (bounded) and across reports here.
    """
    u = usage_table
    ts = micros(u.c.ts)
    query = sa.select(sa.func.sum(_signed_amount())).where(
        u.c.instance_id == instance_id,
        u.c.license_id == license_id,
        u.c.meter == meter,
        sa.or_(u.c.report_digest.is_(None), u.c.report_digest != exclude_digest),
    )
    start_us, end_us = window_us
    if start_us is not None:
        query = query.where(ts >= start_us)
    if end_us is not None:
        query = query.where(ts < end_us)
    if client_id is not None:
        query = query.where(u.c.client_id == client_id)
    data_clients = u.c.client_id.like(CLIENT_PREFIX + "%")
    if data_objects is True:
        query = query.where(data_clients)
    elif data_objects is False:
        query = query.where(sa.not_(data_clients))
    query = query.group_by(u.c.report_digest)
    return sum(int(total or 0) for (total,) in conn.execute(query))


def instance_events(
    conn: Connection, instance_id: str, kind: str, exclude_digest: str
) -> list[tuple[int, int, dict[str, Any]]]:
    """(seq, wall_us, payload) of one instance's stored ledger events of one kind."""
    e = ledger_events_table
    query = (
        sa.select(e.c.seq, e.c.wall_us, e.c.payload)
        .where(
            e.c.instance_id == instance_id,
            e.c.kind == kind,
            sa.or_(e.c.report_digest.is_(None), e.c.report_digest != exclude_digest),
        )
        .order_by(e.c.seq)
    )
    out: list[tuple[int, int, dict[str, Any]]] = []
    for seq, wall_us, payload in conn.execute(query):
        try:
            value = json.loads(payload)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append((int(seq), int(wall_us), value))
    return out
