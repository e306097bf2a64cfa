"""The rows ingest hands to the vendor store, one ``NamedTuple`` per bulk table.

Field order is the column order of :mod:`meterbox.vendorkit._db.schema` (``USAGE_COLUMNS``,
``SEAT_COLUMNS``, ``EVENT_COLUMNS``), so a row goes to the DB-API driver as it is. Times
are integer microseconds, as everywhere in the store.
"""

from __future__ import annotations

from typing import NamedTuple


class UsageInsert(NamedTuple):
    """One ``usage`` row: an increment or a decrement of one meter."""

    instance_id: str
    seq: int
    license_id: str
    meter: str
    ts_us: int
    amount: int
    client_id: str
    kind: str
    report_digest: str
    #: The record's idempotency key (``k``), or None.
    idem_key: str | None = None
    #: Whether this row is billed; ingest stores keyed rows unbilled and bills the first
    #: copy of each key once the report is streamed (docs/adr/0033).
    billed: bool = True


class SeatInsert(NamedTuple):
    """One ``seat_events`` row: checkout, renew, release, expire or denied."""

    instance_id: str
    seq: int
    license_id: str
    feature: str
    ts_us: int
    kind: str
    client_id: str
    lease_id: str | None
    report_digest: str


class EventInsert(NamedTuple):
    """One ``ledger_events`` row: any record that is neither usage nor a seat event."""

    instance_id: str
    seq: int
    kind: str
    wall_us: int
    mono_us: int
    payload: str
    report_digest: str


class LeaseOwner(NamedTuple):
    """Who holds a lease: what a release or renewal in a later report is billed to."""

    license_id: str
    feature: str
    client_id: str


class PendingSeat(NamedTuple):
    """A renew/release/expire whose checkout is in an earlier report (owner looked up)."""

    seq: int
    ts_us: int
    kind: str
    lease_id: str
