"""Read-only queries over the vendor store for the vendor dashboard.

Reuses the store's methods and :mod:`meterbox.vendorkit._db.queries`,
:func:`meterbox.vendorkit.billing.bill` for statements and peak seats, and
:data:`meterbox.vendorkit.anomaly.CODES` for the meaning of each anomaly code.
Nothing here writes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from meterbox.licenses import License
from meterbox.vendorkit._db import queries
from meterbox.vendorkit._db.schema import from_micros
from meterbox.vendorkit._db.store import VendorStore
from meterbox.vendorkit.anomaly import CODES
from meterbox.vendorkit.keys import VendorKeys

#: Findings are listed worst first.
SEVERITY_ORDER: Final = {"critical": 0, "warning": 1, "info": 2}

#: What the ledger and ingest finding families mean, for codes without their own entry.
FAMILIES: Final = {
    "report.": "the report file itself: its format, signature or vendor key",
    "record.": "one ledger record: missing, repeated, reordered or not authentic",
    "epoch.": "a block of ledger records sealed under one key",
    "ledger.": "the chain as a whole against what this vendor acknowledged before",
    "license.": "a license carried by the report, checked against this vendor's store",
    "usage.": "usage records naming something the report does not carry",
    "clock.": "server time against the vendor's clock and the records' own order",
    "anomaly.": "evidence found by the anomaly detectors; it never rejects a report",
}


def explain(code: str) -> str:
    """The one-line meaning of a finding code."""
    if code in CODES:
        return CODES[code]
    for prefix, meaning in FAMILIES.items():
        if code.startswith(prefix):
            return meaning
    return "see docs/threat-model.md for this finding code"


@dataclass(frozen=True)
class Source:
    """Where the vendor's data lives."""

    home: Path
    store_url: str | None = None

    def open(self) -> VendorStore:
        return VendorStore.open(self.store_url, home=self.home)


def overview(src: Source) -> dict[str, Any]:
    keys = VendorKeys.load(src.home)
    with src.open() as store:
        rows = store.list_licenses()
        topups = store.list_topups()
        with store.engine.connect() as conn:
            instances = queries.instances(conn)
            reports = queries.recent_reports(conn, 200)
    customers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        lic = License.from_bytes(row.document, keys.bundle)
        added: dict[str, int] = defaultdict(int)
        for t in topups:
            if t.license_id == lic.license_id:
                added[t.meter] += t.units
        customers[lic.customer].append(
            {
                "license_id": lic.license_id,
                "product": lic.product,
                "issued": lic.issued,
                "expires": lic.expires,
                "features": {n: (f.seats, f.overdraft) for n, f in sorted(lic.features.items())},
                "meters": {
                    n: (m.limit, m.period, added.get(n, 0)) for n, m in sorted(lic.meters.items())
                },
                "report_every_days": lic.report_every_days,
            }
        )
    return {
        "customers": dict(sorted(customers.items())),
        "license_count": len(rows),
        "instances": instances,
        "reports": [report_row(r) for r in reports],
    }


def report_row(r: dict[str, Any]) -> dict[str, Any]:
    """A report with its findings counted by severity and sorted worst first."""
    raw = r["findings"]
    findings = json.loads(raw) if isinstance(raw, str) and raw else list(raw or [])
    findings = [f for f in findings if isinstance(f, dict)]
    findings.sort(key=lambda f: SEVERITY_ORDER.get(str(f.get("severity")), 9))
    counts = dict.fromkeys(SEVERITY_ORDER, 0)
    for f in findings:
        sev = str(f.get("severity"))
        counts[sev] = counts.get(sev, 0) + 1
        f["explanation"] = explain(str(f.get("code", "")))
    return {**r, "findings": findings, "counts": counts}


def report_detail(src: Source, digest: str) -> dict[str, Any] | None:
    with src.open() as store:
        report = store.get_report(digest)
        stored = store.findings_for(report_digest=digest)
    if report is None:
        return None
    row = report_row(
        {
            "report_digest": report.report_digest,
            "instance_id": report.instance_id,
            "from_seq": report.from_seq,
            "head_seq": report.head_seq,
            "ingested_at": report.ingested_at,
            "status": report.status,
            "findings": list(report.findings),
        }
    )
    # Anomaly findings may be stored after the report row; show every one of them.
    seen = {(f.get("code"), f.get("seq"), f.get("message")) for f in row["findings"]}
    for f in stored:
        if (f.code, f.seq, f.message) not in seen:
            row["findings"].append(
                {
                    "code": f.code,
                    "severity": f.severity,
                    "message": f.message,
                    "seq": f.seq,
                    "explanation": explain(f.code),
                }
            )
            row["counts"][f.severity] = row["counts"].get(f.severity, 0) + 1
    row["findings"].sort(key=lambda f: SEVERITY_ORDER.get(str(f.get("severity")), 9))
    return row


def all_findings(src: Source) -> list[dict[str, Any]]:
    with src.open() as store:
        rows = store.findings_for()
    out = [
        {
            "report_digest": f.report_digest,
            "instance_id": f.instance_id,
            "code": f.code,
            "severity": f.severity,
            "message": f.message,
            "seq": f.seq,
            "explanation": explain(f.code),
        }
        for f in rows
    ]
    out.sort(key=lambda f: SEVERITY_ORDER.get(str(f["severity"]), 9))
    return out


def daily_usage(
    src: Source, start: date, end: date, *, today: date | None = None
) -> dict[str, dict[str, list[tuple[date, int]]]]:
    """Net units per UTC day, per meter and license, for ``start <= day < end``.

    Days after ``today`` are left out: a day that has not happened is no day of zero use,
    and a chart must not draw it as one.
    """
    if today is not None:
        end = min(end, today + timedelta(days=1))
    lo = datetime(start.year, start.month, start.day, tzinfo=UTC)
    hi = datetime(end.year, end.month, end.day, tzinfo=UTC)
    with src.open() as store:
        rows = store.usage_between(lo, hi)
    sums: dict[tuple[str, str, date], int] = defaultdict(int)
    for r in rows:
        sign = -1 if r.kind == "decrement" else 1
        sums[(r.meter, r.license_id, r.ts.astimezone(UTC).date())] += sign * r.amount
    out: dict[str, dict[str, list[tuple[date, int]]]] = defaultdict(dict)
    keys = sorted({(m, lic) for m, lic, _ in sums})
    for meter, lic in keys:
        series = []
        day = start
        while day < end:
            series.append((day, sums.get((meter, lic, day), 0)))
            day += timedelta(days=1)
        out[meter][lic] = series
    return dict(sorted(out.items()))


def when(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        value = from_micros(value)
    t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
