"""The vendor's database: licenses, top-ups, instances, reports, usage, seats, findings.

SQLAlchemy 2 Core over SQLite (default ``home/vendor.db``) or PostgreSQL (any
``postgresql://``/``postgres://`` URL is driven through psycopg 3).

Invariants:

* every time is stored as integer microseconds since the Unix epoch, UTC: identical on
  both dialects, sortable, and cheap to write a million of;
* ``usage`` and ``seat_events`` are unique on ``(instance_id, seq)`` and inserted with
  ``ON CONFLICT DO NOTHING``: ingesting the same ledger records twice never bills twice;
* ``reports`` are unique on the report file's SHA-256: ``record_report`` answers
  whether a report is new, so a replayed file is recognised before anything is billed;
* the schema version is stored in ``meterbox_schema``; a database written by a newer
  meterbox is refused rather than misread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from meterbox.errors import ConfigError, StateError
from meterbox.licenses import License, Topup

SCHEMA_VERSION: Final = 1
DB_FILE: Final = "vendor.db"
#: Rows per executemany call: large enough to amortise statement overhead, small enough
#: to keep parameter lists (and PostgreSQL's multi-VALUES batches) bounded in memory.
BATCH_ROWS: Final = 20_000
USAGE_KINDS: Final = ("increment", "decrement")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)

__all__ = [
    "SCHEMA_VERSION",
    "FindingRow",
    "InstanceRow",
    "LicenseRow",
    "ReceiptRow",
    "ReportRow",
    "SeatEventRow",
    "TopupRow",
    "UsageRow",
    "VendorStore",
    "normalise_url",
]


def to_micros(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime: every meterbox time is timezone-aware UTC")
    return (value - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class UTCMicros(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime stored as BIGINT microseconds since the epoch."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: int | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else from_micros(value)


metadata = sa.MetaData()

schema_table = sa.Table(
    "meterbox_schema",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)
licenses_table = sa.Table(
    "licenses",
    metadata,
    sa.Column("license_id", sa.String(64), primary_key=True),
    sa.Column("customer", sa.String(1000), nullable=False, index=True),
    sa.Column("product", sa.String(1000), nullable=False),
    sa.Column("issued", UTCMicros, nullable=False),
    sa.Column("expires", UTCMicros, nullable=True),
    sa.Column("vendor_key_id", sa.String(16), nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),
)
topups_table = sa.Table(
    "topups",
    metadata,
    sa.Column("topup_id", sa.String(64), primary_key=True),
    sa.Column("license_id", sa.String(64), nullable=False, index=True),
    sa.Column("meter", sa.String(64), nullable=False),
    sa.Column("units", sa.BigInteger, nullable=False),
    sa.Column("issued", UTCMicros, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),
)
instances_table = sa.Table(
    "instances",
    metadata,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("license_id", sa.String(64), nullable=False, index=True),
    sa.Column("first_seen", UTCMicros, nullable=False),
    sa.Column("chain_secret", sa.LargeBinary, nullable=True),
    sa.Column("chain_epoch", sa.BigInteger, nullable=True),
    sa.Column("acked_seq", sa.BigInteger, nullable=True),
    sa.Column("acked_hash", sa.String(64), nullable=True),
    sa.Column("last_report_at", UTCMicros, nullable=True),
    sa.Column("instance_public_key", sa.LargeBinary, nullable=True),
)
reports_table = sa.Table(
    "reports",
    metadata,
    sa.Column("report_digest", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("from_seq", sa.BigInteger, nullable=False),
    sa.Column("head_seq", sa.BigInteger, nullable=False),
    sa.Column("ingested_at", UTCMicros, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("findings", sa.Text, nullable=False),
)
usage_table = sa.Table(
    "usage",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("license_id", sa.String(64), nullable=False),
    sa.Column("meter", sa.String(64), nullable=False),
    sa.Column("ts", UTCMicros, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("client_id", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("report_digest", sa.String(64), nullable=True),
    sa.PrimaryKeyConstraint("instance_id", "seq", name="usage_instance_seq"),
    sa.Index("usage_license_ts", "license_id", "ts"),
)
seat_events_table = sa.Table(
    "seat_events",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("license_id", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(64), nullable=False),
    sa.Column("ts", UTCMicros, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("client_id", sa.String(200), nullable=False),
    sa.Column("lease_id", sa.String(64), nullable=True),
    sa.Column("report_digest", sa.String(64), nullable=True),
    sa.PrimaryKeyConstraint("instance_id", "seq", name="seat_events_instance_seq"),
    sa.Index("seat_events_license_ts", "license_id", "ts"),
)
findings_table = sa.Table(
    "findings",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("report_digest", sa.String(64), nullable=False, index=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("code", sa.String(64), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=True),
)
receipts_table = sa.Table(
    "receipts",
    metadata,
    sa.Column("receipt_id", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("report_digest", sa.String(64), nullable=False),
    sa.Column("head_seq", sa.BigInteger, nullable=False),
    sa.Column("vendor_time", UTCMicros, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),
)


def _raw_copy(table: sa.Table) -> sa.Table:
    """The same table with plain BIGINT times, for bulk inserts of pre-converted rows.

    Converting times once while building the parameter dicts and skipping SQLAlchemy's
    per-row bind processing roughly halves the cost of a million-row insert.
    """
    columns = [
        sa.Column(c.name, sa.BigInteger if isinstance(c.type, UTCMicros) else c.type, key=c.key)
        for c in table.columns
    ]
    pk = [c.name for c in table.primary_key.columns]
    return sa.Table(table.name, _raw_metadata, *columns, sa.PrimaryKeyConstraint(*pk))


_raw_metadata = sa.MetaData()
_usage_raw = _raw_copy(usage_table)
_seat_events_raw = _raw_copy(seat_events_table)
_USAGE_COLUMNS: Final = tuple(c.name for c in usage_table.columns)
_SEAT_COLUMNS: Final = tuple(c.name for c in seat_events_table.columns)


@dataclass(frozen=True)
class LicenseRow:
    license_id: str
    customer: str
    product: str
    issued: datetime
    expires: datetime | None
    vendor_key_id: str
    document: bytes


@dataclass(frozen=True)
class TopupRow:
    topup_id: str
    license_id: str
    meter: str
    units: int
    issued: datetime
    document: bytes


@dataclass(frozen=True)
class InstanceRow:
    instance_id: str
    license_id: str
    first_seen: datetime
    chain_secret: bytes | None = None
    chain_epoch: int | None = None
    acked_seq: int | None = None
    acked_hash: str | None = None
    last_report_at: datetime | None = None
    instance_public_key: bytes | None = None


@dataclass(frozen=True)
class ReportRow:
    report_digest: str
    instance_id: str
    from_seq: int
    head_seq: int
    ingested_at: datetime
    status: str
    findings: Sequence[Any] = ()


@dataclass(frozen=True)
class UsageRow:
    instance_id: str
    seq: int
    license_id: str
    meter: str
    ts: datetime
    amount: int
    client_id: str
    kind: str = "increment"
    report_digest: str | None = None


@dataclass(frozen=True)
class SeatEventRow:
    instance_id: str
    seq: int
    license_id: str
    feature: str
    ts: datetime
    kind: str
    client_id: str
    lease_id: str | None = None
    report_digest: str | None = None


@dataclass(frozen=True)
class FindingRow:
    report_digest: str
    instance_id: str
    code: str
    severity: str
    message: str
    seq: int | None = None


@dataclass(frozen=True)
class ReceiptRow:
    receipt_id: str
    instance_id: str
    report_digest: str
    head_seq: int
    vendor_time: datetime
    document: bytes


def normalise_url(url: str | None, home: Path | None) -> str:
    """A SQLAlchemy URL: ``home/vendor.db`` by default, PostgreSQL always via psycopg 3."""
    if url is None or url == "":
        if home is None:
            raise ConfigError(
                "no vendor store given",
                expected="--home DIR or --store URL",
                found="neither",
                hint="Pass --home with the directory created by `meterbox vendor init`",
            )
        return f"sqlite:///{Path(home).resolve() / DB_FILE}"
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if url.startswith("sqlite:///") or url == "sqlite://":
        return url
    raise ConfigError(
        "store URL is not supported",
        expected="postgresql://user@host/db, postgresql+psycopg://... or sqlite:///path",
        found=repr(url.split("@")[-1] if "@" in url else url)[:120],
        hint="Leave --store out to use vendor.db in the home directory",
    )


def _chunks(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class VendorStore:
    """Typed access to the vendor database. Create with :meth:`open`; close when done."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = pg.insert if engine.dialect.name == "postgresql" else sqlite_dialect.insert

    @classmethod
    def open(cls, url: str | None = None, *, home: Path | None = None) -> VendorStore:
        full = normalise_url(url, home)
        engine = sa.create_engine(full)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        store = cls(engine)
        try:
            store._ensure_schema()
        except OperationalError as exc:
            engine.dispose()
            raise StateError(
                "cannot open the vendor store",
                expected="a reachable, writable database",
                found=str(exc.orig).strip().splitlines()[0][:200],
                hint="Check the --store URL or the permissions of the home directory",
            ) from None
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> VendorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_schema(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            version = conn.execute(sa.select(schema_table.c.version)).scalar_one_or_none()
            if version is None:
                try:
                    conn.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
                except IntegrityError:
                    # Another process initialised the same database at the same moment.
                    version = SCHEMA_VERSION
            if version is not None and version != SCHEMA_VERSION:
                raise StateError(
                    "vendor store has an unknown schema version",
                    expected=f"version {SCHEMA_VERSION}",
                    found=f"version {version}",
                    hint="This database was written by a newer meterbox; upgrade meterbox",
                )

    # -- licenses and top-ups ------------------------------------------------------

    def add_license(self, lic: License, document: bytes) -> None:
        row = {
            "license_id": lic.license_id,
            "customer": lic.customer,
            "product": lic.product,
            "issued": lic.issued,
            "expires": lic.expires,
            "vendor_key_id": lic.vendor_key_id,
            "document": document,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(licenses_table.insert(), row)
        except IntegrityError:
            raise StateError(
                "license id already exists in the vendor store",
                expected="a new license id",
                found=lic.license_id,
                hint="Issue the license again; ids are random and should not repeat",
            ) from None

    def get_license(self, license_id: str) -> LicenseRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(licenses_table).where(licenses_table.c.license_id == license_id)
            ).first()
        return None if row is None else LicenseRow(**row._asdict())

    def list_licenses(self, customer: str | None = None) -> list[LicenseRow]:
        query = sa.select(licenses_table).order_by(
            licenses_table.c.issued, licenses_table.c.license_id
        )
        if customer is not None:
            query = query.where(licenses_table.c.customer == customer)
        with self.engine.connect() as conn:
            return [LicenseRow(**r._asdict()) for r in conn.execute(query)]

    def add_topup(self, topup: Topup, document: bytes) -> None:
        if self.get_license(topup.license_id) is None:
            raise StateError(
                "top-up names a license the vendor store does not hold",
                expected="a license issued from this store",
                found=topup.license_id,
                hint="List licenses with `meterbox vendor licenses`",
            )
        row = {
            "topup_id": topup.topup_id,
            "license_id": topup.license_id,
            "meter": topup.meter,
            "units": topup.units,
            "issued": topup.issued,
            "document": document,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(topups_table.insert(), row)
        except IntegrityError:
            raise StateError(
                "top-up id already exists in the vendor store",
                expected="a new top-up id",
                found=topup.topup_id,
            ) from None

    def list_topups(self, license_id: str | None = None) -> list[TopupRow]:
        query = sa.select(topups_table).order_by(topups_table.c.issued, topups_table.c.topup_id)
        if license_id is not None:
            query = query.where(topups_table.c.license_id == license_id)
        with self.engine.connect() as conn:
            return [TopupRow(**r._asdict()) for r in conn.execute(query)]

    # -- instances, reports, receipts ------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(instances_table).where(instances_table.c.instance_id == instance_id)
            ).first()
        return None if row is None else InstanceRow(**row._asdict())

    def upsert_instance(self, inst: InstanceRow, conn: Connection | None = None) -> None:
        values = {
            "instance_id": inst.instance_id,
            "license_id": inst.license_id,
            "first_seen": inst.first_seen,
            "chain_secret": inst.chain_secret,
            "chain_epoch": inst.chain_epoch,
            "acked_seq": inst.acked_seq,
            "acked_hash": inst.acked_hash,
            "last_report_at": inst.last_report_at,
            "instance_public_key": inst.instance_public_key,
        }
        stmt = self._insert(instances_table).values(**values)
        update = {k: stmt.excluded[k] for k in values if k not in ("instance_id", "first_seen")}
        stmt = stmt.on_conflict_do_update(index_elements=["instance_id"], set_=update)
        self._run(stmt, conn)

    def record_report(self, report: ReportRow, conn: Connection | None = None) -> bool:
        """Store a report once; ``False`` means this exact file was ingested before."""
        values = {
            "report_digest": report.report_digest,
            "instance_id": report.instance_id,
            "from_seq": report.from_seq,
            "head_seq": report.head_seq,
            "ingested_at": report.ingested_at,
            "status": report.status,
            "findings": json.dumps(list(report.findings), sort_keys=True),
        }
        stmt = (
            self._insert(reports_table)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(reports_table.c.report_digest)
        )
        # RETURNING, not rowcount: psycopg reports no row count for a skipped conflict.
        if conn is not None:
            return conn.execute(stmt).first() is not None
        with self.engine.begin() as own:
            return own.execute(stmt).first() is not None

    def get_report(self, report_digest: str) -> ReportRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(reports_table).where(reports_table.c.report_digest == report_digest)
            ).first()
        if row is None:
            return None
        data = row._asdict()
        data["findings"] = tuple(json.loads(data["findings"]))
        return ReportRow(**data)

    def add_receipt(self, row: ReceiptRow, conn: Connection | None = None) -> None:
        stmt = self._insert(receipts_table).values(
            receipt_id=row.receipt_id,
            instance_id=row.instance_id,
            report_digest=row.report_digest,
            head_seq=row.head_seq,
            vendor_time=row.vendor_time,
            document=row.document,
        )
        self._run(stmt, conn)

    def receipts_for(self, instance_id: str) -> list[ReceiptRow]:
        query = (
            sa.select(receipts_table)
            .where(receipts_table.c.instance_id == instance_id)
            .order_by(receipts_table.c.head_seq)
        )
        with self.engine.connect() as conn:
            return [ReceiptRow(**r._asdict()) for r in conn.execute(query)]

    # -- bulk rows -------------------------------------------------------------------

    def insert_usage_rows(self, rows: Iterable[UsageRow], conn: Connection | None = None) -> int:
        """Insert usage records; records already present (same instance and seq) are skipped.

        Returns the number of rows actually inserted.
        """
        tuples = (
            (
                r.instance_id,
                r.seq,
                r.license_id,
                r.meter,
                to_micros(r.ts),
                r.amount,
                r.client_id,
                r.kind,
                r.report_digest,
            )
            for r in rows
        )
        return self._bulk(_usage_raw, _USAGE_COLUMNS, tuples, conn)

    def insert_seat_events(
        self, rows: Iterable[SeatEventRow], conn: Connection | None = None
    ) -> int:
        tuples = (
            (
                r.instance_id,
                r.seq,
                r.license_id,
                r.feature,
                to_micros(r.ts),
                r.kind,
                r.client_id,
                r.lease_id,
                r.report_digest,
            )
            for r in rows
        )
        return self._bulk(_seat_events_raw, _SEAT_COLUMNS, tuples, conn)

    def insert_findings(self, rows: Iterable[FindingRow], conn: Connection | None = None) -> int:
        dicts = [
            {
                "report_digest": r.report_digest,
                "instance_id": r.instance_id,
                "code": r.code,
                "severity": r.severity,
                "message": r.message,
                "seq": r.seq,
            }
            for r in rows
        ]
        if not dicts:
            return 0
        return self._run_many(findings_table.insert(), dicts, conn)

    def usage_between(
        self,
        start: datetime,
        end: datetime,
        *,
        customer: str | None = None,
        license_id: str | None = None,
    ) -> list[UsageRow]:
        """Usage with ``start <= ts < end`` ordered by (instance, seq)."""
        t = usage_table
        query = sa.select(t).where(t.c.ts >= start, t.c.ts < end)
        query = self._filter(query, t, customer, license_id).order_by(t.c.instance_id, t.c.seq)
        with self.engine.connect() as conn:
            return [UsageRow(**r._asdict()) for r in conn.execute(query)]

    def seat_events_between(
        self,
        start: datetime,
        end: datetime,
        *,
        customer: str | None = None,
        license_id: str | None = None,
    ) -> list[SeatEventRow]:
        t = seat_events_table
        query = sa.select(t).where(t.c.ts >= start, t.c.ts < end)
        query = self._filter(query, t, customer, license_id).order_by(t.c.instance_id, t.c.seq)
        with self.engine.connect() as conn:
            return [SeatEventRow(**r._asdict()) for r in conn.execute(query)]

    def findings_for(
        self, *, report_digest: str | None = None, instance_id: str | None = None
    ) -> list[FindingRow]:
        t = findings_table
        query = sa.select(
            t.c.report_digest, t.c.instance_id, t.c.code, t.c.severity, t.c.message, t.c.seq
        ).order_by(t.c.id)
        if report_digest is not None:
            query = query.where(t.c.report_digest == report_digest)
        if instance_id is not None:
            query = query.where(t.c.instance_id == instance_id)
        with self.engine.connect() as conn:
            return [FindingRow(**r._asdict()) for r in conn.execute(query)]

    # -- plumbing --------------------------------------------------------------------

    @staticmethod
    def _filter(
        query: sa.Select[Any], table: sa.Table, customer: str | None, license_id: str | None
    ) -> sa.Select[Any]:
        if license_id is not None:
            query = query.where(table.c.license_id == license_id)
        if customer is not None:
            ids = sa.select(licenses_table.c.license_id).where(
                licenses_table.c.customer == customer
            )
            query = query.where(table.c.license_id.in_(ids))
        return query

    def _run(self, stmt: sa.Executable, conn: Connection | None) -> int:
        if conn is not None:
            return _rowcount(conn.execute(stmt))
        with self.engine.begin() as own:
            return _rowcount(own.execute(stmt))

    def _run_many(
        self, stmt: sa.Executable, rows: list[dict[str, Any]], conn: Connection | None
    ) -> int:
        if conn is not None:
            return _rowcount(conn.execute(stmt, rows))
        with self.engine.begin() as own:
            return _rowcount(own.execute(stmt, rows))

    def _bulk(
        self,
        table: sa.Table,
        columns: tuple[str, ...],
        rows: Iterable[tuple[Any, ...]],
        conn: Connection | None,
    ) -> int:
        if conn is not None:
            return self._bulk_in(conn, table, columns, rows)
        # One transaction for the whole call: one commit (one fsync) per ingest, not per row.
        with self.engine.begin() as own:
            return self._bulk_in(own, table, columns, rows)

    def _bulk_in(
        self,
        conn: Connection,
        table: sa.Table,
        columns: tuple[str, ...],
        rows: Iterable[tuple[Any, ...]],
    ) -> int:
        total = 0
        if self.engine.dialect.name == "postgresql":
            # psycopg batches executemany into multi-row VALUES and reports no row count;
            # RETURNING the key of each inserted row is the exact count of new rows.
            stmt = self._insert(table).on_conflict_do_nothing().returning(table.c.seq)
            for batch in _chunks(rows, BATCH_ROWS):
                params = [dict(zip(columns, row, strict=True)) for row in batch]
                total += len(conn.execute(stmt, params).all())
        else:
            # Straight to sqlite3's executemany: SQLAlchemy's per-row parameter handling
            # would be half the cost of a million-row ingest. The statement is built from
            # the table definition only, never from data.
            sql = (
                f"INSERT INTO {table.name} ({', '.join(columns)}) "  # noqa: S608
                f"VALUES ({', '.join('?' * len(columns))}) ON CONFLICT DO NOTHING"
            )
            for batch in _chunks(rows, BATCH_ROWS):
                # sqlite3's executemany sums the changes of every row: skipped rows add 0.
                total += _rowcount(conn.exec_driver_sql(sql, batch))
        return total

    def begin(self) -> AbstractContextManager[Connection]:
        """A transaction for callers that group several writes (``with store.begin() as c``)."""
        return self.engine.begin()


def _rowcount(result: Any) -> int:
    count = getattr(result, "rowcount", -1)
    return int(count) if count is not None and count >= 0 else 0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL lets the dashboard read while an ingest writes; NORMAL is durable at each
        # checkpoint, which is enough for data that can always be re-ingested.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=10000")
    finally:
        cur.close()
