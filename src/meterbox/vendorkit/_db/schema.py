"""The vendor store's schema: every table in one :data:`metadata`, one :data:`SCHEMA_VERSION`.

Invariants:

* every time is an integer number of microseconds: wall times since the Unix epoch,
  UTC; the site's monotonic clock since its boot. Identical on SQLite and PostgreSQL,
  sortable, and cheap to write a million of. Columns typed :class:`UTCMicros` read back
  as aware datetimes; the columns of ingest's bookkeeping tables are named ``*_us``
  and read back as the integers they are;
* ``usage``, ``seat_events`` and ``ledger_events`` are unique on ``(instance_id, seq)``
  and written with ``ON CONFLICT DO NOTHING``: the same ledger record is never stored,
  so never billed, twice;
* a usage event is billed once per ``(license_id, idem_key)`` across every instance:
  ``usage.billed`` is true for at most one row of a key (a partial unique index), and a
  copy of the event redelivered to another node of a cluster is stored with
  ``billed`` false (docs/adr/0033-cluster-idempotency-keys.md). Rows without a key are
  each billed;
* ``reports`` are unique on the report file's SHA-256, so a replayed file is
  recognised before anything is billed;
* ``meterbox_schema`` holds :data:`SCHEMA_VERSION`; a store of any other version is
  refused rather than misread (docs/adr/0019-one-vendor-store-schema.md).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import sqlalchemy as sa

#: Version 1 kept ingest's four bookkeeping tables outside the version, in
#: milliseconds. Version 2 is one schema in microseconds. Version 3 adds the usage
#: event's idempotency key and whether the row is the billed copy of its event
#: (``usage.idem_key``, ``usage.billed``; a version 2 store is migrated on open by
#: :func:`meterbox.vendorkit._db.store.migrate_2_to_3`). Version 4 adds
#: ``tpm_credentials`` (docs/adr/0036), created at open for a version 2 or 3 store.
SCHEMA_VERSION: Final = 4
#: Versions a store is migrated from at open.
MIGRATES_FROM: Final = frozenset({2, 3})
#: Longest idempotency key a server accepts (docs/api.md, POST /v1/usage).
MAX_IDEM_KEY: Final = 128

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO: Final = timedelta(microseconds=1)


def to_micros(value: datetime) -> int:
    """An aware datetime as integer microseconds since the Unix epoch."""
    if value.tzinfo is None:
        raise ValueError("naive datetime: every meterbox time is timezone-aware UTC")
    return (value - _EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    """Integer microseconds since the Unix epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=value)


class UTCMicros(sa.types.TypeDecorator[datetime]):
    """An aware UTC datetime stored as BIGINT microseconds since the epoch."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> int | None:
        return None if value is None else to_micros(value)

    def process_result_value(self, value: int | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else from_micros(value)


def micros(column: sa.ColumnElement[datetime]) -> sa.ColumnElement[int]:
    """A :class:`UTCMicros` column read and compared as the plain integer it is stored as."""
    return sa.type_coerce(column, sa.BigInteger)


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
#: The license notices (suspend, resume, revoke) the vendor issued, numbered per license
#: (docs/spec/suspension.md). A table added within schema 2: ``create_all`` adds it to
#: an existing store, and no other table changes.
notices_table = sa.Table(
    "license_notices",
    metadata,
    sa.Column("notice_id", sa.String(64), primary_key=True),
    sa.Column("license_id", sa.String(64), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(1000), nullable=True),
    sa.Column("issued", UTCMicros, nullable=False),
    sa.Column("document", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("license_id", "sequence", name="license_notices_sequence"),
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
    # Schema 3: the record's idempotency key (field ``k``), and whether this row is the
    # one copy of its event that is billed. Added at the end, as ALTER TABLE adds them.
    sa.Column("idem_key", sa.String(MAX_IDEM_KEY), nullable=True),
    sa.Column("billed", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.PrimaryKeyConstraint("instance_id", "seq", name="usage_instance_seq"),
    sa.Index("usage_license_ts", "license_id", "ts"),
)
_billed_keyed = sa.and_(usage_table.c.billed == sa.true(), usage_table.c.idem_key.is_not(None))
#: At most one billed row per (license, key): the store itself refuses a second.
usage_billed_key_index = sa.Index(
    "usage_billed_key",
    usage_table.c.license_id,
    usage_table.c.idem_key,
    unique=True,
    sqlite_where=_billed_keyed,
    postgresql_where=_billed_keyed,
)
#: Every copy of one event: what ingest's redelivery step looks up per row.
usage_key_index = sa.Index("usage_key", usage_table.c.license_id, usage_table.c.idem_key)
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
#: Per (instance, license) the first and last wall time of the records the vendor has
#: verified, so two instances of one license active at the same time (a clone) can be
#: told from a server that replaced another.
activity_table = sa.Table(
    "instance_activity",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("license_id", sa.String(64), nullable=False, index=True),
    sa.Column("first_wall_us", sa.BigInteger, nullable=False),
    sa.Column("last_wall_us", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("instance_id", "license_id", name="instance_activity_pk"),
)
#: Per report the wall-time span of its new records, its status and licenses, so billing
#: shows the findings of every report that touches a period, rejected ones included.
report_spans_table = sa.Table(
    "report_spans",
    metadata,
    sa.Column("report_digest", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("license_ids", sa.Text, nullable=False),
    sa.Column("first_wall_us", sa.BigInteger, nullable=True),
    sa.Column("last_wall_us", sa.BigInteger, nullable=True),
    sa.Column("status", sa.String(32), nullable=False),
)
#: Every new record of an accepted report that is neither usage nor a seat event
#: (heartbeats, boots, clock steps, imports, denials, ...) with its wall and monotonic
#: time and a small JSON payload: what the clock, heartbeat and snapshot detectors read.
ledger_events_table = sa.Table(
    "ledger_events",
    metadata,
    sa.Column("instance_id", sa.String(64), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("wall_us", sa.BigInteger, nullable=False),
    sa.Column("mono_us", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("report_digest", sa.String(64), nullable=False),
    sa.PrimaryKeyConstraint("instance_id", "seq", name="ledger_events_pk"),
)
#: Per report the site's creation time, the vendor's receive time and the reporting
#: interval of the licenses it carries (the shortest, with its grace), so the anomaly
#: detectors need no flags.
report_meta_table = sa.Table(
    "report_meta",
    metadata,
    sa.Column("report_digest", sa.String(64), primary_key=True),
    sa.Column("instance_id", sa.String(64), nullable=False, index=True),
    sa.Column("created_us", sa.BigInteger, nullable=False),
    sa.Column("received_us", sa.BigInteger, nullable=False),
    sa.Column("report_every_days", sa.Integer, nullable=True),
    sa.Column("grace_days", sa.Integer, nullable=False),
)

#: Per instance the TPM the vendor pinned at its first attested report (TPM Names, hex)
#: and the counter the last accepted report attested (docs/adr/0011-tpm-anchor.md).
tpm_pins_table = sa.Table(
    "tpm_pins",
    metadata,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("ak_name", sa.String(140), nullable=False),
    sa.Column("ek_name", sa.String(140), nullable=False),
    sa.Column("nv_name", sa.String(140), nullable=False),
    sa.Column("last_counter", sa.BigInteger, nullable=False),
)

#: The TPM manufacturer CA certificates the vendor trusts for EK certificates
#: (``vendor tpm-ca add``; docs/adr/0031-ek-certificates-and-reenrolment.md). Added to
#: schema version 2 by ``create_all``, like ``tpm_pins``: a store without it gets it on
#: open, and an empty table means "no CA set configured".
tpm_ek_cas_table = sa.Table(
    "tpm_ek_cas",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("subject", sa.Text, nullable=False),
    sa.Column("der", sa.LargeBinary, nullable=False),
    sa.Column("added_us", sa.BigInteger, nullable=False),
)

#: Per instance the TPM credential challenge outstanding for its pinned attestation key
#: (the secret sealed to its EK and the challenge the receipts carry), or the key proven
#: (``proven``, secret and challenge cleared); docs/adr/0036-tpm-credential-challenge.md.
#: ``reports`` counts the reports ingested since the challenge without an answer.
tpm_credentials_table = sa.Table(
    "tpm_credentials",
    metadata,
    sa.Column("instance_id", sa.String(64), primary_key=True),
    sa.Column("ak_name", sa.String(140), nullable=False),
    sa.Column("secret", sa.LargeBinary, nullable=True),
    sa.Column("challenge", sa.LargeBinary, nullable=True),
    sa.Column("reports", sa.Integer, nullable=False),
    sa.Column("proven", sa.Boolean, nullable=False),
    sa.Column("updated_us", sa.BigInteger, nullable=False),
)

USAGE_COLUMNS: Final = tuple(c.name for c in usage_table.columns)
SEAT_COLUMNS: Final = tuple(c.name for c in seat_events_table.columns)
EVENT_COLUMNS: Final = tuple(c.name for c in ledger_events_table.columns)
