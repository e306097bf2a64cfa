"""Billing statements: units, prepaid, overage and peak seats per license and period.

:func:`build_statement` is pure (rows in, statement out, exact integers only);
:func:`bill` is the shell that reads the store.

Rules (ADR 0006):

* ``used`` is the net units of the period: usage minus decrements with a record time
  in ``[start, end)`` of the UTC month;
* monthly meters: ``prepaid`` is the license limit plus top-ups issued in the period;
  ``overage = max(0, used - prepaid)``;
* total meters: ``prepaid`` is the limit plus every top-up issued before the period
  ends; ``used_to_date`` is the net usage since the beginning up to the period's end;
  ``overage_to_date = max(0, used_to_date - prepaid)`` and the period's ``overage``
  is the part of it that accrued in this period (``overage_to_date`` minus the same
  figure at the period's start), so consecutive statements never bill one unit twice;
* unlimited meters have ``prepaid = None`` and never an overage;
* peak seats: seat events are replayed per server instance in sequence order
  (checkout and renew hold a lease, release and expire end it); the instances'
  levels are summed in time order; the peak of each UTC hour counts the leases held
  when the hour begins. Only hours inside the period with a peak above zero appear.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from meterbox.errors import ConfigError
from meterbox.licenses import License, VendorPublicBundle

HOUR_MS: Final = 3_600_000
_PERIOD_RE: Final = re.compile(r"(\d{4})-(\d{2})")


# ------------------------------------------------------------------- inputs
@dataclass(frozen=True, slots=True)
class Period:
    """One UTC calendar month, as ``[start_ms, end_ms)``."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        m = _PERIOD_RE.fullmatch(text)
        if m is None or not 1 <= int(m[2]) <= 12 or int(m[1]) < 1970:
            raise ConfigError(
                "--period is not usable",
                expected="a UTC month YYYY-MM, from 1970-01",
                found=repr(text),
                hint="For example --period 2026-01",
            )
        return cls(int(m[1]), int(m[2]))

    @property
    def start_ms(self) -> int:
        return int(datetime(self.year, self.month, 1, tzinfo=UTC).timestamp()) * 1000

    @property
    def end_ms(self) -> int:
        y, m = (self.year + 1, 1) if self.month == 12 else (self.year, self.month + 1)
        return int(datetime(y, m, 1, tzinfo=UTC).timestamp()) * 1000

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class MeterTerms:
    limit: int | None
    period: str  # "month" or "total"


@dataclass(frozen=True, slots=True)
class LicenseTerms:
    license_id: str
    customer: str
    meters: Mapping[str, MeterTerms]

    @classmethod
    def from_license(cls, lic: License) -> LicenseTerms:
        return cls(
            lic.license_id,
            lic.customer,
            {name: MeterTerms(m.limit, m.period) for name, m in lic.meters.items()},
        )


@dataclass(frozen=True, slots=True)
class TopupIn:
    license_id: str
    meter: str
    units: int
    issued_ms: int


@dataclass(frozen=True, slots=True)
class SeatEventIn:
    instance_id: str
    seq: int
    license_id: str
    feature: str
    ts_ms: int
    kind: str  # checkout | renew | release | expire | denied
    lease_id: str | None


@dataclass(frozen=True, slots=True)
class FindingIn:
    report_digest: str
    instance_id: str
    license_ids: tuple[str, ...]
    code: str
    severity: str
    message: str
    seq: int | None


# ------------------------------------------------------------------ outputs
@dataclass(frozen=True, slots=True)
class MeterLine:
    customer: str
    license_id: str
    meter: str
    period_kind: str
    used: int
    prepaid: int | None
    overage: int
    used_to_date: int | None = None
    overage_to_date: int | None = None


@dataclass(frozen=True, slots=True)
class SeatPeak:
    customer: str
    license_id: str
    feature: str
    hour: str  # ISO hour, UTC: 2026-01-05T13:00Z
    peak: int


@dataclass(frozen=True, slots=True)
class FindingLine:
    customer: str
    license_id: str
    instance_id: str
    report_digest: str
    code: str
    severity: str
    message: str
    seq: int | None


@dataclass(frozen=True)
class Statement:
    period: str
    meters: tuple[MeterLine, ...] = ()
    seats: tuple[SeatPeak, ...] = ()
    denials: Mapping[tuple[str, str], int] = field(default_factory=dict)
    findings: tuple[FindingLine, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "period": self.period,
            "meters": [asdict(m) for m in self.meters],
            "seats": [asdict(s) for s in self.seats],
            "denials": [
                {"license_id": lic, "feature": feat, "count": n}
                for (lic, feat), n in sorted(self.denials.items())
            ],
            "findings": [asdict(f) for f in self.findings],
        }

    def to_csv(self) -> str:
        """One row per meter line (the billable part); seats and findings are in JSON."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow(
            [
                "period", "customer", "license_id", "meter", "period_kind", "used",
                "prepaid", "overage", "used_to_date", "overage_to_date",
            ]
        )  # fmt: skip
        for m in self.meters:
            w.writerow(
                [
                    self.period, m.customer, m.license_id, m.meter, m.period_kind, m.used,
                    "" if m.prepaid is None else m.prepaid, m.overage,
                    "" if m.used_to_date is None else m.used_to_date,
                    "" if m.overage_to_date is None else m.overage_to_date,
                ]
            )  # fmt: skip
        return out.getvalue()


# --------------------------------------------------------------------- core
def _hour_iso(hour_index: int) -> str:
    return datetime.fromtimestamp(hour_index * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")


def meter_lines(
    period: Period,
    terms: Sequence[LicenseTerms],
    used_in_period: Mapping[tuple[str, str], int],
    used_before: Mapping[tuple[str, str], int],
    topups: Iterable[TopupIn],
) -> list[MeterLine]:
    """Meter lines for every meter of every license, plus meters seen only in usage."""
    start, end = period.start_ms, period.end_ms
    topup_total: dict[tuple[str, str], int] = {}
    topup_month: dict[tuple[str, str], int] = {}
    for t in topups:
        if t.issued_ms >= end:
            continue
        key = (t.license_id, t.meter)
        topup_total[key] = topup_total.get(key, 0) + t.units
        if t.issued_ms >= start:
            topup_month[key] = topup_month.get(key, 0) + t.units
    lines: list[MeterLine] = []
    for lic in sorted(terms, key=lambda x: (x.customer, x.license_id)):
        names = set(lic.meters) | {m for (lid, m) in used_in_period if lid == lic.license_id}
        for name in sorted(names):
            key = (lic.license_id, name)
            used = used_in_period.get(key, 0)
            mt = lic.meters.get(name, MeterTerms(0, "total"))
            if mt.period == "month":
                prepaid = None if mt.limit is None else mt.limit + topup_month.get(key, 0)
                overage = 0 if prepaid is None else max(0, used - prepaid)
                lines.append(
                    MeterLine(lic.customer, lic.license_id, name, "month", used, prepaid, overage)
                )
                continue
            before = used_before.get(key, 0)
            to_date = before + used
            if mt.limit is None:
                lines.append(
                    MeterLine(
                        lic.customer, lic.license_id, name, "total", used, None, 0, to_date, 0
                    )
                )
                continue
            prepaid = mt.limit + topup_total.get(key, 0)
            over_to_date = max(0, to_date - prepaid)
            over_before = max(0, before - prepaid)
            lines.append(
                MeterLine(
                    lic.customer,
                    lic.license_id,
                    name,
                    "total",
                    used,
                    prepaid,
                    max(0, over_to_date - over_before),
                    to_date,
                    over_to_date,
                )
            )
    return lines


Step = tuple[int, str, int, tuple[str, str], int]


def _split_denials(
    period: Period, events: Iterable[SeatEventIn]
) -> tuple[dict[str, list[SeatEventIn]], dict[tuple[str, str], int]]:
    """Lease events grouped per instance; denials inside the period counted apart."""
    by_instance: dict[str, list[SeatEventIn]] = {}
    denials: dict[tuple[str, str], int] = {}
    for e in events:
        if e.kind != "denied":
            by_instance.setdefault(e.instance_id, []).append(e)
        elif period.start_ms <= e.ts_ms < period.end_ms:
            key = (e.license_id, e.feature)
            denials[key] = denials.get(key, 0) + 1
    return by_instance, denials


def _instance_steps(inst: str, evs: list[SeatEventIn]) -> list[Step]:
    """One instance's lease count per (license, feature) after each event, in seq order."""
    evs.sort(key=lambda x: x.seq)
    held: dict[str, tuple[str, str]] = {}
    counts: dict[tuple[str, str], int] = {}
    steps: list[Step] = []
    for e in evs:
        key = (e.license_id, e.feature)
        lease = e.lease_id or f"#{e.seq}"
        if e.kind in ("checkout", "renew"):
            # A renew of a lease already held records the unchanged level.
            if lease not in held:
                held[lease] = key
                counts[key] = counts.get(key, 0) + 1
        elif e.kind in ("release", "expire") and lease in held:
            key = held.pop(lease)
            counts[key] -= 1
        else:
            continue
        steps.append((e.ts_ms, inst, e.seq, key, counts[key]))
    return steps


def seat_peaks(
    period: Period, events: Iterable[SeatEventIn], customers: Mapping[str, str]
) -> tuple[list[SeatPeak], dict[tuple[str, str], int]]:
    """Peak concurrent leases per (license, feature) per UTC hour of the period; denials."""
    start_h, end_h = period.start_ms // HOUR_MS, period.end_ms // HOUR_MS
    # 1. Per instance, in seq order: the instance's lease count after each event.
    by_instance, denials = _split_denials(period, events)
    steps = [s for inst, evs in by_instance.items() for s in _instance_steps(inst, evs)]
    # 2. Merge the instances in time order; the total is the sum of current levels.
    steps.sort(key=lambda s: (s[0], s[1], s[2]))
    current: dict[tuple[str, tuple[str, str]], int] = {}
    totals: dict[tuple[str, str], int] = {}
    peaks: dict[tuple[tuple[str, str], int], int] = {}
    last_hour: dict[tuple[str, str], int] = {}

    def carry(key: tuple[str, str], upto: int) -> None:
        # Hours after the key's previous event, up to and including ``upto``, begin
        # with the level that event left behind.
        level, h = totals.get(key, 0), last_hour.get(key)
        if h is None or level == 0:
            return
        for hour in range(max(h + 1, start_h), min(upto, end_h - 1) + 1):
            peaks[(key, hour)] = max(peaks.get((key, hour), 0), level)

    for ts, inst, _seq, key, level in steps:
        hour = ts // HOUR_MS
        carry(key, hour)
        totals[key] = totals.get(key, 0) + level - current.get((inst, key), 0)
        current[(inst, key)] = level
        last_hour[key] = max(hour, last_hour.get(key, hour))
        if start_h <= hour < end_h:
            peaks[(key, hour)] = max(peaks.get((key, hour), 0), totals[key])
    for key in totals:
        carry(key, end_h - 1)
    out = [
        SeatPeak(customers.get(lic, ""), lic, feat, _hour_iso(hour), peak)
        for ((lic, feat), hour), peak in sorted(peaks.items())
        if peak > 0
    ]
    return out, denials


def build_statement(
    period: Period,
    terms: Sequence[LicenseTerms],
    used_in_period: Mapping[tuple[str, str], int],
    used_before: Mapping[tuple[str, str], int],
    topups: Iterable[TopupIn],
    seat_events: Iterable[SeatEventIn],
    findings: Iterable[FindingIn] = (),
) -> Statement:
    """The statement of ``period`` for the licenses in ``terms`` (pure)."""
    customers = {t.license_id: t.customer for t in terms}
    wanted = set(customers)
    lines = meter_lines(period, terms, used_in_period, used_before, topups)
    peaks, denials = seat_peaks(
        period, (e for e in seat_events if e.license_id in wanted), customers
    )
    flines: list[FindingLine] = []
    for f in findings:
        lics = [lic for lic in f.license_ids if lic in wanted] or ([] if f.license_ids else [""])
        for lic in lics:
            flines.append(
                FindingLine(
                    customers.get(lic, ""),
                    lic,
                    f.instance_id,
                    f.report_digest,
                    f.code,
                    f.severity,
                    f.message,
                    f.seq,
                )
            )
    return Statement(str(period), tuple(lines), tuple(peaks), denials, tuple(flines))


# -------------------------------------------------------------------- shell
def bill(
    home: Path,
    period: Period,
    *,
    customer: str | None = None,
    store_url: str | None = None,
    bundle: VendorPublicBundle | None = None,
) -> Statement:
    """Read the store and build the statement for ``period`` (optionally one customer)."""
    from meterbox.vendorkit._db import queries as db
    from meterbox.vendorkit._db.store import VendorStore
    from meterbox.vendorkit.keys import VendorKeys

    bundle = bundle or VendorKeys.load(home).bundle
    start_us, end_us = period.start_ms * 1000, period.end_ms * 1000
    with VendorStore.open(store_url, home=home) as store, store.engine.connect() as conn:
        rows = db.licenses(conn, customer)
        terms = [LicenseTerms.from_license(License.from_bytes(doc, bundle)) for *_, doc in rows]
        ids = [t.license_id for t in terms]
        in_period = db.usage_sums(conn, start_us=start_us, end_us=end_us, license_ids=ids)
        before = db.usage_sums(conn, start_us=None, end_us=start_us, license_ids=ids)
        topups = [
            TopupIn(lic, meter, units, issued // 1000)
            for lic, meter, units, issued in db.topups(conn, end_us)
        ]
        seats = [
            SeatEventIn(inst, seq, lic, feat, ts // 1000, kind, lease)
            for inst, seq, lic, feat, ts, kind, lease in db.seat_rows(
                conn, end_us=end_us, license_ids=ids
            )
        ]
        findings = [
            FindingIn(digest, inst, tuple(x for x in lics.split(",") if x), code, sev, msg, seq)
            for digest, inst, lics, code, sev, msg, seq in db.findings_touching(
                conn, start_us=start_us, end_us=end_us
            )
        ]
    if customer is not None and not terms:
        raise ConfigError(
            "no licenses for this customer",
            expected="a customer name listed by `meterbox vendor licenses`",
            found=repr(customer),
            hint="Check the spelling, or leave --customer out",
        )
    return build_statement(period, terms, in_period, before, topups, seats, findings)


def to_json_text(statement: Statement) -> str:
    return json.dumps(statement.to_json(), indent=2, sort_keys=True)
