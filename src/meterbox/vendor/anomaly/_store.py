"""Adapter: per-instance histories from the vendor store's tables (read-only).

The store keeps usage and seat events with their sequence numbers and wall times, and
one row per ingested report (sequence range, vendor ingest time). It does not keep
heartbeats, boots, clock steps or monotonic times today, so detectors that need them
stay silent on store-built histories (they run in full where the verified records are
at hand: at ingest, and in the evaluation). Reports that were rejected are not history.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import sqlalchemy as sa

from meterbox.vendor.anomaly._features import (
    CHECKOUT,
    DECREMENT,
    EXPIRE,
    RELEASE,
    RENEW,
    USAGE,
    Event,
    InstanceHistory,
    ReportView,
)
from meterbox.vendor.store import (
    VendorStore,
    instances_table,
    licenses_table,
    reports_table,
    seat_events_table,
    to_micros,
    usage_table,
)

_SEAT_KINDS = {
    "checkout": CHECKOUT,
    "renew": RENEW,
    "release": RELEASE,
    "expire": EXPIRE,
}
#: Report statuses that are not accepted history.
_REJECTED = frozenset({"rejected", "critical", "replayed"})


def histories(
    store: VendorStore,
    *,
    customer: str | None = None,
    report_every_ms: Mapping[str, int] | None = None,
) -> list[InstanceHistory]:
    """Every instance (of one customer, or all), its accepted reports in ingest order."""
    every = report_every_ms or {}
    lic_q = sa.select(licenses_table.c.license_id, licenses_table.c.customer)
    if customer is not None:
        lic_q = lic_q.where(licenses_table.c.customer == customer)
    with store.engine.connect() as conn:
        owners = {r.license_id: r.customer for r in conn.execute(lic_q)}
        inst = conn.execute(
            sa.select(instances_table.c.instance_id, instances_table.c.license_id)
            .where(instances_table.c.license_id.in_(list(owners)))
            .order_by(instances_table.c.instance_id)
        ).all()
        out = []
        for instance_id, license_id in inst:
            reports = _reports(conn, instance_id)
            out.append(
                InstanceHistory(
                    instance_id,
                    license_id,
                    owners.get(license_id, ""),
                    every.get(license_id),
                    0,
                    tuple(reports),
                )
            )
    return out


def _reports(conn: sa.Connection, instance_id: str) -> list[ReportView]:
    rows = conn.execute(
        sa.select(reports_table)
        .where(reports_table.c.instance_id == instance_id)
        .order_by(reports_table.c.ingested_at, reports_table.c.head_seq)
    ).all()
    events: dict[int, Event] = {}
    u = usage_table
    for r in conn.execute(
        sa.select(u.c.seq, u.c.ts, u.c.amount, u.c.kind).where(u.c.instance_id == instance_id)
    ):
        kind = DECREMENT if r.kind == "decrement" else USAGE
        amount = -abs(r.amount) if kind == DECREMENT else r.amount
        events[r.seq] = Event(r.seq, kind, _ms(r.ts), amount=amount)
    s = seat_events_table
    for r in conn.execute(
        sa.select(s.c.seq, s.c.ts, s.c.kind, s.c.lease_id).where(s.c.instance_id == instance_id)
    ):
        kind = _SEAT_KINDS.get(r.kind.removeprefix("seat."), r.kind)
        events[r.seq] = Event(r.seq, kind, _ms(r.ts), lease=r.lease_id or "")
    ordered = sorted(events.items())
    out: list[ReportView] = []
    by_report: dict[str, list[Event]] = defaultdict(list)
    done = -1
    for row in rows:
        if row.status in _REJECTED:
            continue
        lo, hi = max(row.from_seq, done + 1), row.head_seq
        by_report[row.report_digest] = [e for seq, e in ordered if lo <= seq <= hi]
        done = max(done, hi)
        received = _ms(row.ingested_at)
        out.append(
            ReportView(
                row.report_digest,
                received,
                received,
                row.from_seq,
                row.head_seq,
                tuple(by_report[row.report_digest]),
            )
        )
    return out


def _ms(value: object) -> int:
    from datetime import datetime

    if isinstance(value, datetime):
        return to_micros(value) // 1000
    return int(value) // 1000 if isinstance(value, int) else 0
