"""The vendor store: typed reads and writes over :mod:`.schema`, on SQLite or PostgreSQL.

SQLAlchemy 2 Core over SQLite (default ``home/vendor.db``) or PostgreSQL (any
``postgresql://``/``postgres://`` URL is driven through psycopg 3).

Invariants:

* every time crossing this API is an aware datetime or integer microseconds (names
  ending in ``_us``), never milliseconds;
* the rows of one ledger record are inserted with ``ON CONFLICT DO NOTHING`` on
  ``(instance_id, seq)``: ingesting the same records twice never bills twice;
* :meth:`VendorStore.record_report` answers whether a report file is new;
* methods taking a ``conn`` write inside the caller's transaction, so ingest commits
  a report's rows, verdict and receipt together or not at all;
* a store of another schema version is refused before anything is created in it.

Bulk rows go straight to the DB-API driver in large ``executemany`` batches with times
already converted to integer microseconds: per-row SQLAlchemy work would dominate a
million-record ingest. Those statements are built from fixed column lists, never from
data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, OperationalError

from meterbox._fs import disk_error, is_disk_full
from meterbox.errors import ConfigError, StateError
from meterbox.licenses import License, LicenseNotice, Topup
from meterbox.tpm import TpmPins
from meterbox.vendorkit._db import queries
from meterbox.vendorkit._db.schema import (
    EVENT_COLUMNS,
    MIGRATES_FROM,
    SCHEMA_VERSION,
    SEAT_COLUMNS,
    USAGE_COLUMNS,
    activity_table,
    findings_table,
    instances_table,
    licenses_table,
    metadata,
    notices_table,
    receipts_table,
    report_meta_table,
    report_spans_table,
    reports_table,
    schema_table,
    seat_events_table,
    topups_table,
    tpm_credentials_table,
    tpm_ek_cas_table,
    tpm_pins_table,
    usage_billed_key_index,
    usage_key_index,
    usage_table,
)
from meterbox.vendorkit._redelivery import KeyedUsage
from meterbox.vendorkit._rows import EventInsert, SeatInsert, UsageInsert
from meterbox.vendorkit._tpm_check import CredentialState

DB_FILE: Final = "vendor.db"
#: Lease ids per ``IN (...)`` list: well under every driver's parameter limit.
_IN_CHUNK: Final = 500


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
class NoticeRow:
    notice_id: str
    license_id: str
    sequence: int
    action: str
    reason: str | None
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
    idem_key: str | None = None
    billed: bool = True


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


@dataclass(frozen=True, slots=True)
class Activity:
    """Wall-time span (microseconds) of one instance's verified records for one license."""

    instance_id: str
    license_id: str
    first_wall_us: int
    last_wall_us: int


@dataclass(frozen=True, slots=True)
class ReportMeta:
    """What the anomaly detectors need to know about a report besides its records."""

    report_digest: str
    instance_id: str
    created_us: int
    received_us: int
    report_every_days: int | None
    grace_days: int


@dataclass(frozen=True, slots=True)
class ReportSpan:
    """The wall-time span of a report's new records, for billing's findings."""

    report_digest: str
    instance_id: str
    license_ids: tuple[str, ...]
    first_wall_us: int | None
    last_wall_us: int | None
    status: str


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


def migrate_2_to_3(conn: Connection) -> None:
    """Schema 2 to 3: usage rows get ``idem_key`` (NULL) and ``billed`` (true).

    Rows stored before the migration carry no key: each stays billed, exactly as
    schema 2 billed it. Runs inside the caller's transaction with the version update,
    so a store is either wholly version 2 or wholly version 3.
    """
    dialect = conn.dialect
    for name in ("idem_key", "billed"):
        column = sa.schema.CreateColumn(usage_table.c[name]).compile(dialect=dialect)
        conn.exec_driver_sql(f"ALTER TABLE {usage_table.name} ADD COLUMN {column}")
    for index in (usage_billed_key_index, usage_key_index):
        conn.execute(sa.schema.CreateIndex(index))
    conn.execute(sa.update(schema_table).values(version=3))


def _version_error(version: int) -> StateError:
    if version < SCHEMA_VERSION:
        return StateError(
            "vendor store was written by an earlier meterbox",
            expected=f"schema version {SCHEMA_VERSION}",
            found=f"version {version}",
            hint=(
                f"Schema {version} was never released, so there is no migration: move "
                "HOME/vendor.db aside (or point --store at an empty database), run the "
                "command again to create a new store, and issue licenses into it"
            ),
        )
    return StateError(
        "vendor store has an unknown schema version",
        expected=f"version {SCHEMA_VERSION}",
        found=f"version {version}",
        hint="This database was written by a newer meterbox; upgrade meterbox",
    )


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
            if is_disk_full(exc):
                raise disk_error(
                    "cannot open the vendor store: the disk is full",
                    exc.orig if isinstance(exc.orig, BaseException) else exc,
                    hint="free disk space where the store lives, then run the command again",
                ) from None
            raise StateError(
                "cannot open the vendor store",
                expected="a reachable, writable database",
                found=str(exc.orig).strip().splitlines()[0][:200],
                hint="Check the --store URL or the permissions of the home directory",
            ) from None
        except StateError:
            engine.dispose()
            raise
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> VendorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ensure_schema(self) -> None:
        # The version is read before create_all: a store of another version must be
        # refused exactly as it is, without tables of this version added to it.
        # A version this meterbox migrates from is migrated first, in one transaction.
        with self.engine.begin() as conn:
            if sa.inspect(conn).has_table(schema_table.name):
                version = conn.execute(sa.select(schema_table.c.version)).scalar_one_or_none()
                if version == 2:
                    migrate_2_to_3(conn)
                    version = 3
                if (
                    version is not None
                    and version != SCHEMA_VERSION
                    and version not in MIGRATES_FROM
                ):
                    raise _version_error(int(version))
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            # Migration 3 -> 4 adds tpm_credentials, which create_all just made; the
            # version moves only after the table exists (docs/adr/0019, ADR 0036).
            conn.execute(
                schema_table.update()
                .where(schema_table.c.version.in_(sorted(MIGRATES_FROM)))
                .values(version=SCHEMA_VERSION)
            )
            version = conn.execute(sa.select(schema_table.c.version)).scalar_one_or_none()
            if version is None:
                try:
                    conn.execute(schema_table.insert().values(id=1, version=SCHEMA_VERSION))
                except IntegrityError:
                    # Another process initialised the same database at the same moment.
                    version = SCHEMA_VERSION
            if version is not None and version != SCHEMA_VERSION:
                raise _version_error(int(version))

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

    def machine_activations(self) -> dict[str, set[str]]:
        """Per license, the node-locked machine codes its reports show activated."""
        with self.engine.connect() as conn:
            return queries.machine_activations(conn)

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

    # -- license notices -------------------------------------------------------------

    def list_notices(self, license_id: str | None = None) -> list[NoticeRow]:
        query = sa.select(notices_table).order_by(
            notices_table.c.license_id, notices_table.c.sequence
        )
        if license_id is not None:
            query = query.where(notices_table.c.license_id == license_id)
        with self.engine.connect() as conn:
            return [NoticeRow(**r._asdict()) for r in conn.execute(query)]

    def add_notice(
        self,
        build: Callable[[int], tuple[LicenseNotice, bytes]],
        license_id: str,
    ) -> tuple[LicenseNotice, bytes]:
        """Number, sign (``build(sequence) -> (notice, document)``) and store a notice.

        The sequence is one above the license's last, taken in the same transaction as
        the insert; two vendors racing for one number get a unique-constraint error for
        the second, never two notices with one number. A revoked license gets none.
        """
        if self.get_license(license_id) is None:
            raise StateError(
                "license notice names a license the vendor store does not hold",
                expected="a license issued from this store",
                found=license_id,
                hint="List licenses with `meterbox vendor licenses`",
            )
        try:
            with self.engine.begin() as conn:
                rows = conn.execute(
                    sa.select(notices_table.c.sequence, notices_table.c.action)
                    .where(notices_table.c.license_id == license_id)
                    .order_by(notices_table.c.sequence.desc())
                    .limit(1)
                ).first()
                if rows is not None and rows.action == "revoke":
                    raise StateError(
                        f"license {license_id} was revoked; revocation is final",
                        expected="a license that is not revoked",
                        found=f"notice {rows.sequence} revoked it",
                        hint="Issue a new license with `meterbox vendor issue` instead",
                    )
                notice, document = build(1 if rows is None else int(rows.sequence) + 1)
                conn.execute(
                    notices_table.insert(),
                    {
                        "notice_id": notice.notice_id,
                        "license_id": notice.license_id,
                        "sequence": notice.sequence,
                        "action": notice.action,
                        "reason": notice.reason,
                        "issued": notice.issued,
                        "document": document,
                    },
                )
        except IntegrityError:
            raise StateError(
                "another license notice took the same number",
                expected="one notice at a time per license",
                found=f"a concurrent notice for {license_id}",
                hint="Run the command again",
            ) from None
        return notice, document

    # -- instances, reports, receipts ------------------------------------------------

    def get_instance(self, instance_id: str) -> InstanceRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(instances_table).where(instances_table.c.instance_id == instance_id)
            ).first()
        return None if row is None else InstanceRow(**row._asdict())

    def upsert_instance(self, inst: InstanceRow, conn: Connection) -> None:
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
        conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=update))

    def tpm_pins(self, instance_id: str, conn: Connection) -> TpmPins:
        """The TPM pinned for an instance; empty pins before its first attested report."""
        row = conn.execute(
            sa.select(tpm_pins_table).where(tpm_pins_table.c.instance_id == instance_id)
        ).first()
        if row is None:
            return TpmPins()
        return TpmPins(
            ak_name=bytes.fromhex(row.ak_name),
            ek_name=bytes.fromhex(row.ek_name),
            nv_name=bytes.fromhex(row.nv_name),
            last_counter=int(row.last_counter),
        )

    def put_tpm_pins(self, instance_id: str, pins: TpmPins, conn: Connection) -> None:
        if pins.ak_name is None or pins.ek_name is None or pins.nv_name is None:
            raise ValueError("only complete pins (from a verified attestation) are stored")
        values = {
            "instance_id": instance_id,
            "ak_name": pins.ak_name.hex(),
            "ek_name": pins.ek_name.hex(),
            "nv_name": pins.nv_name.hex(),
            "last_counter": pins.last_counter or 0,
        }
        stmt = self._insert(tpm_pins_table).values(**values)
        update = {k: stmt.excluded[k] for k in values if k != "instance_id"}
        conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=update))

    def tpm_credential(self, instance_id: str, conn: Connection) -> CredentialState | None:
        """The credential challenge outstanding for (or the proof of) an instance's AK."""
        t = tpm_credentials_table
        row = conn.execute(sa.select(t).where(t.c.instance_id == instance_id)).first()
        if row is None:
            return None
        return CredentialState(
            ak_name=bytes.fromhex(row.ak_name),
            secret=None if row.secret is None else bytes(row.secret),
            challenge=None if row.challenge is None else bytes(row.challenge),
            reports=int(row.reports),
            proven=bool(row.proven),
        )

    def put_tpm_credential(
        self, instance_id: str, state: CredentialState, updated_us: int, conn: Connection
    ) -> None:
        values = {
            "instance_id": instance_id,
            "ak_name": state.ak_name.hex(),
            "secret": state.secret,
            "challenge": state.challenge,
            "reports": state.reports,
            "proven": state.proven,
            "updated_us": updated_us,
        }
        stmt = self._insert(tpm_credentials_table).values(**values)
        update = {k: stmt.excluded[k] for k in values if k != "instance_id"}
        conn.execute(stmt.on_conflict_do_update(index_elements=["instance_id"], set_=update))

    def add_tpm_ca(self, sha256: str, subject: str, der: bytes, added_us: int) -> bool:
        """Trust one TPM manufacturer CA certificate; False when it was trusted already."""
        with self.engine.begin() as conn:
            stmt = (
                self._insert(tpm_ek_cas_table)
                .values(sha256=sha256, subject=subject, der=der, added_us=added_us)
                .on_conflict_do_nothing()
                .returning(tpm_ek_cas_table.c.sha256)
            )
            return conn.execute(stmt).first() is not None

    def tpm_cas(self, conn: Connection | None = None) -> list[tuple[str, str, bytes]]:
        """The trusted TPM manufacturer CAs as (sha256, subject, DER), oldest first."""
        t = tpm_ek_cas_table
        query = sa.select(t.c.sha256, t.c.subject, t.c.der).order_by(t.c.added_us, t.c.sha256)
        if conn is not None:
            return [(r.sha256, r.subject, bytes(r.der)) for r in conn.execute(query)]
        with self.engine.connect() as own:
            return [(r.sha256, r.subject, bytes(r.der)) for r in own.execute(query)]

    def report_known(self, report_digest: str, conn: Connection) -> bool:
        """Whether a report file with this SHA-256 was ingested before."""
        t = reports_table
        row = conn.execute(sa.select(t.c.report_digest).where(t.c.report_digest == report_digest))
        return row.first() is not None

    def record_report(self, report: ReportRow, conn: Connection) -> bool:
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
        return conn.execute(stmt).first() is not None

    def record_report_meta(self, meta: ReportMeta, conn: Connection) -> None:
        conn.execute(
            report_meta_table.insert().values(
                report_digest=meta.report_digest,
                instance_id=meta.instance_id,
                created_us=meta.created_us,
                received_us=meta.received_us,
                report_every_days=meta.report_every_days,
                grace_days=meta.grace_days,
            )
        )

    def record_report_span(self, span: ReportSpan, conn: Connection) -> None:
        conn.execute(
            report_spans_table.insert().values(
                report_digest=span.report_digest,
                instance_id=span.instance_id,
                license_ids=",".join(span.license_ids),
                first_wall_us=span.first_wall_us,
                last_wall_us=span.last_wall_us,
                status=span.status,
            )
        )

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

    def add_receipt(self, row: ReceiptRow, conn: Connection) -> None:
        conn.execute(
            self._insert(receipts_table).values(
                receipt_id=row.receipt_id,
                instance_id=row.instance_id,
                report_digest=row.report_digest,
                head_seq=row.head_seq,
                vendor_time=row.vendor_time,
                document=row.document,
            )
        )

    def insert_findings(self, rows: Iterable[FindingRow], conn: Connection) -> None:
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
        if dicts:
            conn.execute(findings_table.insert(), dicts)

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

    # -- ledger records, in bulk -------------------------------------------------------

    def insert_usage(self, rows: Sequence[UsageInsert], conn: Connection) -> None:
        """Usage rows; a record already stored (same instance and seq) is skipped."""
        _insert_raw(conn, usage_table.name, USAGE_COLUMNS, rows)

    def insert_seat_events(self, rows: Sequence[SeatInsert], conn: Connection) -> None:
        """Seat event rows; a record already stored is skipped."""
        _insert_raw(conn, seat_events_table.name, SEAT_COLUMNS, rows)

    def insert_ledger_events(self, rows: Sequence[EventInsert], conn: Connection) -> None:
        """Other ledger records (heartbeats, boots, ...); a record already stored is skipped."""
        _insert_raw(conn, "ledger_events", EVENT_COLUMNS, rows)

    def usage_between(
        self,
        start: datetime,
        end: datetime,
        *,
        customer: str | None = None,
        license_id: str | None = None,
        billed_only: bool = True,
    ) -> list[UsageRow]:
        """Usage with ``start <= ts < end`` ordered by (instance, seq).

        Only the billed rows unless ``billed_only`` is false: a usage event redelivered
        to a second node of a cluster is one event (docs/adr/0033).
        """
        t = usage_table
        query = sa.select(t).where(t.c.ts >= start, t.c.ts < end)
        if billed_only:
            query = query.where(t.c.billed == sa.true())
        if license_id is not None:
            query = query.where(t.c.license_id == license_id)
        if customer is not None:
            ids = sa.select(licenses_table.c.license_id).where(
                licenses_table.c.customer == customer
            )
            query = query.where(t.c.license_id.in_(ids))
        query = query.order_by(t.c.instance_id, t.c.seq)
        with self.engine.connect() as conn:
            return [UsageRow(**r._asdict()) for r in conn.execute(query)]

    # -- usage events redelivered to another node (docs/adr/0033) ----------------------

    def bill_sole_copies(
        self, instance_id: str, report_digest: str, after_seq: int, conn: Connection
    ) -> None:
        """Bill, in one statement, the keyed rows of one report whose event has no other
        row anywhere in the store: the trivial case of the redelivery rule, and nearly
        every row. The other keyed rows are left for :meth:`keyed_usage_of_report`.
        """
        u = usage_table
        o = usage_table.alias("other")
        other_copy = sa.exists().where(
            o.c.license_id == u.c.license_id,
            o.c.idem_key == u.c.idem_key,
            sa.or_(o.c.instance_id != u.c.instance_id, o.c.seq != u.c.seq),
        )
        conn.execute(
            sa.update(u)
            .where(
                u.c.instance_id == instance_id,
                u.c.seq > after_seq,
                u.c.report_digest == report_digest,
                u.c.idem_key.is_not(None),
                u.c.billed == sa.false(),
                ~other_copy,
            )
            .values(billed=True)
        )

    def keyed_usage_of_report(
        self, instance_id: str, report_digest: str, after_seq: int, limit: int, conn: Connection
    ) -> list[KeyedUsage]:
        """Up to ``limit`` unbilled keyed rows of one report after ``after_seq``, by seq."""
        t = usage_table
        query = (
            sa.select(*_KEYED_COLUMNS)
            .where(
                t.c.instance_id == instance_id,
                t.c.seq > after_seq,
                t.c.report_digest == report_digest,
                t.c.idem_key.is_not(None),
                t.c.billed == sa.false(),
            )
            .order_by(t.c.seq)
            .limit(limit)
        )
        return [_keyed(r) for r in conn.execute(query)]

    def billed_copies(
        self, keys: Iterable[tuple[str, str]], conn: Connection
    ) -> dict[tuple[str, str], KeyedUsage]:
        """(license, key) -> the billed row of that event, for the keys that have one."""
        wanted = sorted(set(keys))
        t = usage_table
        out: dict[tuple[str, str], KeyedUsage] = {}
        by_license: dict[str, list[str]] = {}
        for lic, key in wanted:
            by_license.setdefault(lic, []).append(key)
        for lic, idem_keys in by_license.items():
            for start in range(0, len(idem_keys), _IN_CHUNK):
                query = sa.select(*_KEYED_COLUMNS).where(
                    t.c.billed == sa.true(),
                    t.c.license_id == lic,
                    t.c.idem_key.in_(idem_keys[start : start + _IN_CHUNK]),
                )
                for r in conn.execute(query):
                    copy = _keyed(r)
                    out[copy.license_id, copy.key] = copy
        return out

    def bill_rows(self, instance_id: str, seqs: Sequence[int], conn: Connection) -> None:
        """Mark rows of one instance as the billed copy of their event.

        The partial unique index refuses a second billed row of one (license, key):
        an ingest that tried would fail and roll back, never bill twice.
        """
        t = usage_table
        for start in range(0, len(seqs), _IN_CHUNK):
            chunk = list(seqs[start : start + _IN_CHUNK])
            conn.execute(
                sa.update(t)
                .where(t.c.instance_id == instance_id, t.c.seq.in_(chunk))
                .values(billed=True)
            )

    # -- what ingest looks up ----------------------------------------------------------

    def open_leases(self, instance_id: str, conn: Connection) -> set[str]:
        """Leases of one instance checked out and not yet released or expired."""
        t = seat_events_table
        query = (
            sa.select(t.c.lease_id, t.c.kind)
            .where(
                t.c.instance_id == instance_id,
                t.c.kind.in_(("checkout", "borrow", "release", "expire", "remove", "return")),
                t.c.lease_id.is_not(None),
            )
            .order_by(t.c.seq)
        )
        leases: set[str] = set()
        for lease, kind in conn.execute(query):
            if kind in ("checkout", "borrow"):
                leases.add(lease)
            else:
                leases.discard(lease)
        return leases

    def lease_owners(
        self, instance_id: str, lease_ids: Iterable[str], conn: Connection
    ) -> dict[str, tuple[str, str, str]]:
        """Lease id -> (license id, feature, client id) from earlier checkouts of one instance."""
        ids = sorted(set(lease_ids))
        out: dict[str, tuple[str, str, str]] = {}
        t = seat_events_table
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = sa.select(t.c.lease_id, t.c.license_id, t.c.feature, t.c.client_id).where(
                t.c.instance_id == instance_id,
                t.c.kind.in_(("checkout", "borrow")),
                t.c.lease_id.in_(chunk),
            )
            for lease, lic, feature, client in conn.execute(query):
                out[lease] = (lic, feature, client)
        return out

    def activity_for_licenses(self, license_ids: Iterable[str], conn: Connection) -> list[Activity]:
        ids = sorted(set(license_ids))
        if not ids:
            return []
        t = activity_table
        query = sa.select(t).where(t.c.license_id.in_(ids)).order_by(t.c.instance_id)
        return [Activity(**r._asdict()) for r in conn.execute(query)]

    def upsert_activity(self, rows: Iterable[Activity], conn: Connection) -> None:
        """Widen each (instance, license) span to include the given one."""
        t = activity_table
        for a in rows:
            key = (t.c.instance_id == a.instance_id, t.c.license_id == a.license_id)
            old = conn.execute(sa.select(t.c.first_wall_us, t.c.last_wall_us).where(*key)).first()
            if old is None:
                conn.execute(
                    t.insert().values(
                        instance_id=a.instance_id,
                        license_id=a.license_id,
                        first_wall_us=a.first_wall_us,
                        last_wall_us=a.last_wall_us,
                    )
                )
            else:
                conn.execute(
                    t.update()
                    .where(*key)
                    .values(
                        first_wall_us=min(old[0], a.first_wall_us),
                        last_wall_us=max(old[1], a.last_wall_us),
                    )
                )


#: The columns :func:`_keyed` reads, in its order.
_KEYED_COLUMNS: Final = tuple(
    usage_table.c[name]
    for name in ("instance_id", "seq", "license_id", "idem_key", "meter", "kind", "amount")
)


def _keyed(r: Any) -> KeyedUsage:
    return KeyedUsage(
        str(r.instance_id),
        int(r.seq),
        str(r.license_id),
        str(r.idem_key),
        str(r.meter),
        str(r.kind),
        int(r.amount),
    )


def _insert_raw(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Bulk insert of pre-converted tuples; rows already present are skipped.

    SQLite: one ``executemany``. PostgreSQL: ``COPY`` into a temporary staging table of
    the same shape, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``: COPY
    moves rows without a statement each, which makes a million-record ingest about
    twice as fast as psycopg's pipelined ``executemany`` (docs/benchmarks.md, "Report
    ingest"). The staging table is emptied after each batch and lives in the
    caller's transaction, so a rejected report's rollback drops it with the rest.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        _copy_raw(conn, table, columns, rows)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - fixed columns
        f"VALUES ({', '.join([mark] * len(columns))}) ON CONFLICT DO NOTHING"
    )
    conn.exec_driver_sql(sql, rows)


def _copy_raw(
    conn: Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    # Table and column names come from the fixed schema, never from data.
    names = ", ".join(columns)
    stage = f"stage_{table}"
    driver: Any = conn.connection.driver_connection
    with driver.cursor() as cur:
        cur.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} "
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        with cur.copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        cur.execute(
            f"INSERT INTO {table} ({names}) SELECT {names} FROM {stage} "  # noqa: S608
            "ON CONFLICT DO NOTHING"
        )
        cur.execute(f"TRUNCATE {stage}")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        # WAL lets the dashboard read while an ingest writes. FULL, not NORMAL: the
        # receipt is published once the ingest commits, and under NORMAL a power loss
        # can undo a WAL commit until the next checkpoint, leaving a receipt the site
        # imports (and compacts after) for an ingest the store no longer holds.
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=10000")
    finally:
        cur.close()
