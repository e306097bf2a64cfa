"""Store access for ingest and billing that the general store API does not offer.

Two extra tables live beside those of :mod:`meterbox.vendorkit.store`, in the same
database and created the same way (``create_all``, idempotent):

* ``instance_activity``: per (instance, license) the first and last wall time of the
  records the vendor has verified, so two instances of one license that were active
  at the same time (a clone) can be told from a server that replaced another;
* ``report_spans``: per report the wall-time span of its new records, its status and
  licenses, so billing can show the findings of every report that touches a period,
  including reports that were rejected;
* ``ledger_events``: every new record of an accepted report that is neither usage nor
  a seat event (heartbeats, boots, shutdowns, recoveries, clock steps, receipt and
  top-up imports, license installs, denials), with its wall *and monotonic* time and a
  small JSON payload, unique on (instance, seq): what the clock, heartbeat and snapshot
  detectors of :mod:`meterbox.vendorkit.anomaly` read;
* ``report_meta``: per report the site's creation time, the vendor's receive time and
  the reporting interval of the licenses it carries (``report_every_days``, the
  shortest, with its ``grace_days``), so the anomaly detectors need no flags.

Bulk rows go straight to the DB-API driver in large ``executemany`` batches with times
already converted to integer microseconds: per-row ORM work would dominate a
million-record ingest. Statements are built from fixed column lists, never from data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from meterbox.vendorkit.store import (
    findings_table,
    instances_table,
    licenses_table,
    reports_table,
    seat_events_table,
    topups_table,
    usage_table,
)

#: Our own metadata: the general store's schema stays exactly what its module declares.
metadata = sa.MetaData()

activity_table = sa.Table(
    "instance_activity",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("license_id", sa.String(64), nullable=False, index=True),
    sa.Column("first_wall_ms", sa.BigInteger, nullable=False),
    sa.Column("last_wall_ms", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("instance_id", "license_id", name="instance_activity_pk"),
)
report_spans_table = sa.Table(
    "report_spans",
    metadata,
    sa.Column("report_digest", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("license_ids", sa.Text, nullable=False),
    sa.Column("first_wall_ms", sa.BigInteger, nullable=True),
    sa.Column("last_wall_ms", sa.BigInteger, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
)

ledger_events_table = sa.Table(
    "ledger_events",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("wall_ms", sa.BigInteger, nullable=False),
    sa.Column("mono_ms", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("report_digest", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("instance_id", "seq", name="ledger_events_pk"),
)
report_meta_table = sa.Table(
    "report_meta",
    metadata,
    sa.Column("report_digest", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_ms", sa.BigInteger, nullable=False),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Column("report_every_days", sa.Integer, nullable=True),
    sa.Column("grace_days", sa.Integer, nullable=False),
)

EVENT_COLUMNS: Final = tuple(c.name for c in ledger_events_table.columns)
USAGE_COLUMNS: Final = tuple(c.name for c in usage_table.columns)
SEAT_COLUMNS: Final = tuple(c.name for c in seat_events_table.columns)


def ensure_tables(engine: sa.Engine) -> None:
    metadata.create_all(engine)


def _insert_sql(conn: Connection, table: str, columns: Sequence[str]) -> str:
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed columns
        f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT DO NOTHING"
    )


def insert_raw(conn: Connection, table: str, columns: Sequence[str], rows: list[Any]) -> None:
    """``executemany`` of pre-converted tuples; rows already present are skipped."""
    if rows:
        conn.exec_driver_sql(_insert_sql(conn, table, columns), rows)


# ------------------------------------------------------------------ ingest reads
@dataclass(frozen=True, slots=True)
class Activity:
    instance_id: str
    license_id: str
    first_wall_ms: int
    last_wall_ms: int


def activity_for_licenses(conn: Connection, license_ids: Iterable[str]) -> list[Activity]:
    ids = sorted(set(license_ids))
    if not ids:
        return []
    t = activity_table
    query = sa.select(t).where(t.c.license_id.in_(ids)).order_by(t.c.instance_id)
    return [Activity(**r._asdict()) for r in conn.execute(query)]


def upsert_activity(conn: Connection, rows: Iterable[Activity]) -> None:
    t = activity_table
    for a in rows:
        old = conn.execute(
            sa.select(t.c.first_wall_ms, t.c.last_wall_ms).where(
                t.c.instance_id == a.instance_id, t.c.license_id == a.license_id
            )
        ).first()
        if old is None:
            conn.execute(t.insert().values(**_d(a)))
        else:
            conn.execute(
                t.update()
                .where(t.c.instance_id == a.instance_id, t.c.license_id == a.license_id)
                .values(
                    first_wall_ms=min(old[0], a.first_wall_ms),
                    last_wall_ms=max(old[1], a.last_wall_ms),
                )
            )


def _d(a: Activity) -> dict[str, Any]:
    return {
        "instance_id": a.instance_id,
        "license_id": a.license_id,
        "first_wall_ms": a.first_wall_ms,
        "last_wall_ms": a.last_wall_ms,
    }


def report_known(conn: Connection, digest_hex: str) -> bool:
    t = reports_table
    row = conn.execute(sa.select(t.c.report_digest).where(t.c.report_digest == digest_hex))
    return row.first() is not None


def lease_owners(
    conn: Connection, instance_id: str, lease_ids: Iterable[str]
) -> dict[str, tuple[str, str, str]]:
    """lease id -> (license id, feature, client id) from earlier checkouts of one instance."""
    ids = sorted(set(lease_ids))
    out: dict[str, tuple[str, str, str]] = {}
    t = seat_events_table
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        query = sa.select(t.c.lease_id, t.c.license_id, t.c.feature, t.c.client_id).where(
            t.c.instance_id == instance_id, t.c.kind == "checkout", t.c.lease_id.in_(chunk)
        )
        for lease, lic, feature, client in conn.execute(query):
            out[lease] = (lic, feature, client)
    return out


def open_leases(conn: Connection, instance_id: str) -> set[str]:
    """Leases of one instance checked out and not yet released or expired."""
    t = seat_events_table
    query = (
        sa.select(t.c.lease_id, t.c.kind)
        .where(
            t.c.instance_id == instance_id,
            t.c.kind.in_(("checkout", "release", "expire")),
            t.c.lease_id.is_not(None),
        )
        .order_by(t.c.seq)
    )
    leases: set[str] = set()
    for lease, kind in conn.execute(query):
        if kind == "checkout":
            leases.add(lease)
        else:
            leases.discard(lease)
    return leases


# ------------------------------------------------------------------ billing reads
def _micros(column: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    """A UTC-microseconds column read and compared as the plain integer it is stored as."""
    return sa.type_coerce(column, sa.BigInteger)


def usage_sums(
    conn: Connection, *, start_us: int | None, end_us: int, license_ids: Sequence[str] | None
) -> dict[tuple[str, str], int]:
    """Net units (increments minus decrements) per (license, meter) with ts in [start, end)."""
    t = usage_table
    ts = _micros(t.c.ts)
    signed = sa.case((t.c.kind == "decrement", -t.c.amount), else_=t.c.amount)
    query = sa.select(t.c.license_id, t.c.meter, sa.func.sum(signed)).where(ts < end_us)
    if start_us is not None:
        query = query.where(ts >= start_us)
    if license_ids is not None:
        query = query.where(t.c.license_id.in_(list(license_ids)))
    query = query.group_by(t.c.license_id, t.c.meter)
    return {(lic, meter): int(total or 0) for lic, meter, total in conn.execute(query)}


def seat_rows(
    conn: Connection, *, end_us: int, license_ids: Sequence[str] | None
) -> list[tuple[str, int, str, str, int, str, str | None]]:
    """(instance, seq, license, feature, ts_us, kind, lease) up to ``end``, by instance, seq."""
    t = seat_events_table
    ts = _micros(t.c.ts)
    query = sa.select(
        t.c.instance_id, t.c.seq, t.c.license_id, t.c.feature, ts, t.c.kind, t.c.lease_id
    ).where(ts < end_us)
    if license_ids is not None:
        query = query.where(t.c.license_id.in_(list(license_ids)))
    query = query.order_by(t.c.instance_id, t.c.seq)
    return [tuple(r) for r in conn.execute(query)]


def licenses(conn: Connection, customer: str | None) -> list[tuple[str, str, bytes]]:
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
    issued = _micros(t.c.issued)
    query = sa.select(t.c.license_id, t.c.meter, t.c.units, issued).where(issued < end_us)
    return [(r[0], r[1], int(r[2]), int(r[3])) for r in conn.execute(query)]


def findings_touching(
    conn: Connection, *, start_ms: int, end_ms: int
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
        .where(s.c.first_wall_ms < end_ms, s.c.last_wall_ms >= start_ms)
        .order_by(f.c.id)
    )
    return [tuple(r) for r in conn.execute(query)]


def instance_license(conn: Connection, instance_id: str) -> str | None:
    t = instances_table
    row = conn.execute(sa.select(t.c.license_id).where(t.c.instance_id == instance_id)).first()
    return None if row is None else str(row[0])
