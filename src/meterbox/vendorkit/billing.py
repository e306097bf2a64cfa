"""Billing statements: units, prepaid, overage and peak seats per license and period.

:func:`build_statement` is pure (rows in, statement out, exact integers only);
:func:`bill` is the shell that reads the store.

Rules (ADR 0006):

* ``used`` is the net units of the period: usage minus decrements with a record time
  in ``[start, end)`` of the UTC month, itemised as ``increments`` and ``decrements``;
* monthly meters: ``prepaid`` is the license limit plus top-ups issued in the period;
  ``overage = max(0, used - prepaid)``;
* total meters: ``prepaid`` is the limit plus every top-up issued before the period
  ends; ``used_to_date`` is the net usage since the beginning up to the period's end;
  ``overage_to_date = max(0, used_to_date - prepaid)`` and the period's ``overage``
  is the part of it that accrued in this period (``overage_to_date`` minus the same
  figure at the period's start), so consecutive statements never bill one unit twice;
* unlimited meters have ``prepaid = None`` and never an overage;
* seats: seat events are replayed per server instance in sequence order into one
  interval ``[checkout, release or expiry)`` per lease; a lease with neither on
  record ends, for now, at the creation time of its instance's latest accepted
  report (never at the period's end) and continues when the next report brings its
  renewals or release. ``seat_ms`` is the intervals' time inside the period; the peak
  of a UTC hour is the most intervals (over every instance) held at one instant of
  it, a release and a checkout at one instant being one seat. Only hours with a peak
  above zero appear.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meterbox.errors import ConfigError
from meterbox.licenses import License, VendorPublicBundle

if TYPE_CHECKING:
    from meterbox.vendorkit.prices import Charges, PriceList

#: The statement's version (docs/spec/bill.md); the JSON carries it as ``format``.
BILL_FORMAT: Final = "meterbox-bill/3"
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
    #: The license's product: the scope of product prices in a price file.
    product: str = ""

    @classmethod
    def from_license(cls, lic: License) -> LicenseTerms:
        return cls(
            lic.license_id,
            lic.customer,
            {name: MeterTerms(m.limit, m.period) for name, m in lic.meters.items()},
            lic.product,
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
    kind: str  # checkout | borrow | renew | release | expire | remove | return | denied
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
    #: ``used`` itemised: units recorded in the period, and units given back in it
    #: (decrements); ``used == increments - decrements``.
    increments: int = 0
    decrements: int = 0


@dataclass(frozen=True, slots=True)
class SeatPeak:
    customer: str
    license_id: str
    feature: str
    hour: str  # ISO hour, UTC: 2026-01-05T13:00Z
    peak: int


@dataclass(frozen=True, slots=True)
class SeatLine:
    """Per license and feature: seat time held in the period, its peak and denials."""

    customer: str
    license_id: str
    feature: str
    #: Milliseconds of seat time inside the period, summed over leases (exact).
    seat_ms: int
    #: Most leases held at one instant of the period.
    peak: int
    denials: int
    #: Leases with no release or expiry on record yet, shown up to their report's time.
    live_leases: int
    #: The part of ``seat_ms`` held by borrowed seats (used with no server).
    borrowed_ms: int = 0


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
    seat_lines: tuple[SeatLine, ...] = ()
    #: The priced lines, when the statement was built with a price file.
    charges: Charges | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BILL_FORMAT,
            "charges": None if self.charges is None else _charges_json(self.charges),
            "period": self.period,
            "meters": [asdict(m) for m in self.meters],
            "seats": [asdict(s) for s in self.seats],
            "denials": [
                {"license_id": lic, "feature": feat, "count": n}
                for (lic, feat), n in sorted(self.denials.items())
            ],
            "findings": [asdict(f) for f in self.findings],
            "seat_lines": [asdict(x) for x in self.seat_lines],
        }

    def to_csv(self) -> str:
        """One row per meter line (the billable part); seats and findings are in JSON.

        With prices, one row per charge line instead (meters and seats, priced).
        """
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        if self.charges is not None:
            w.writerow(CHARGE_COLUMNS)
            c = self.charges
            for x in c.lines:
                w.writerow(
                    [
                        self.period, x.customer, x.license_id, x.product, x.kind, x.item,
                        x.quantity, x.unit, x.unit_price, c.currency, c.minor_units,
                        x.amount_minor,
                    ]
                )  # fmt: skip
            return out.getvalue()
        w.writerow(
            [
                "period", "customer", "license_id", "meter", "period_kind", "used",
                "prepaid", "overage", "used_to_date", "overage_to_date", "increments",
                "decrements",
            ]
        )  # fmt: skip
        for m in self.meters:
            w.writerow(
                [
                    self.period, m.customer, m.license_id, m.meter, m.period_kind, m.used,
                    "" if m.prepaid is None else m.prepaid, m.overage,
                    "" if m.used_to_date is None else m.used_to_date,
                    "" if m.overage_to_date is None else m.overage_to_date, m.increments,
                    m.decrements,
                ]
            )  # fmt: skip
        return out.getvalue()


#: Columns of the charges CSV (``vendor bill --prices``), in order (docs/spec/bill.md).
CHARGE_COLUMNS: Final = (
    "period", "customer", "license_id", "product", "kind", "item", "quantity", "unit",
    "unit_price", "currency", "minor_units", "amount_minor",
)  # fmt: skip


def _charges_json(c: Charges) -> dict[str, Any]:
    totals = c.totals()
    return {
        "currency": c.currency,
        "minor_units": c.minor_units,
        "lines": [asdict(x) for x in c.lines],
        "unpriced": [asdict(x) for x in c.unpriced],
        "totals": [{"customer": k, "amount_minor": v} for k, v in sorted(totals.items())],
        "total_minor": c.total_minor,
    }


# --------------------------------------------------------------------- core
def _hour_iso(hour_index: int) -> str:
    return datetime.fromtimestamp(hour_index * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")


def meter_lines(
    period: Period,
    terms: Sequence[LicenseTerms],
    used_in_period: Mapping[tuple[str, str], int],
    used_before: Mapping[tuple[str, str], int],
    topups: Iterable[TopupIn],
    decrements: Mapping[tuple[str, str], int] | None = None,
) -> list[MeterLine]:
    """Meter lines for every meter of every license, plus meters seen only in usage.

    ``decrements`` are the units given back in the period per (license, meter); they
    are already netted into ``used_in_period`` and only itemise it.
    """
    given_back = decrements or {}
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
        names = set(lic.meters) | {
            m for (lid, m) in (*used_in_period, *given_back) if lid == lic.license_id
        }
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
    return [
        replace(
            x,
            increments=x.used + given_back.get((x.license_id, x.meter), 0),
            decrements=given_back.get((x.license_id, x.meter), 0),
        )
        for x in lines
    ]


@dataclass(frozen=True, slots=True)
class LeaseInterval:
    """One lease as the time it held a seat: ``[start_ms, end_ms)``.

    ``live`` is true when no release or expiry is on record yet: the lease then ends,
    for now, at the time of its instance's latest accepted report, and the next report
    (with its renewals, release or expiry) moves that end forward. Intervals are
    rebuilt from every stored seat row each time, so a lease continued across reports
    is one interval and is never counted twice.
    """

    instance_id: str
    lease_id: str
    license_id: str
    feature: str
    start_ms: int
    end_ms: int
    live: bool
    #: Opened by a borrow (``seat.borrowed``) rather than a checkout.
    borrowed: bool = False


def lease_intervals(
    events: Iterable[SeatEventIn], report_times: Mapping[str, int]
) -> tuple[list[LeaseInterval], list[SeatEventIn]]:
    """Every lease's interval, replayed per instance in seq order; and the denials.

    A checkout (or a renewal of a lease the vendor never saw checked out, whose checkout
    was compacted away before the vendor held it) opens a lease; a release, an expiry
    or a removal by the site administrator closes it. A lease still open ends at
    ``report_times[instance]`` (milliseconds), or at its instance's latest seat event
    if that report time is unknown.
    """
    by_instance: dict[str, list[SeatEventIn]] = {}
    denials: list[SeatEventIn] = []
    for e in events:
        if e.kind == "denied":
            denials.append(e)
        else:
            by_instance.setdefault(e.instance_id, []).append(e)
    out: list[LeaseInterval] = []
    for inst, evs in sorted(by_instance.items()):
        evs.sort(key=lambda x: x.seq)
        open_: dict[str, SeatEventIn] = {}
        for e in evs:
            lease = e.lease_id or f"#{e.seq}"
            if e.kind in ("checkout", "borrow", "renew"):
                open_.setdefault(lease, e)
            elif e.kind in ("release", "expire", "remove", "return") and lease in open_:
                first = open_.pop(lease)
                out.append(
                    LeaseInterval(
                        inst,
                        lease,
                        first.license_id,
                        first.feature,
                        first.ts_ms,
                        max(first.ts_ms, e.ts_ms),
                        False,
                        first.kind == "borrow",
                    )
                )
        until = report_times.get(inst, max(e.ts_ms for e in evs))
        for lease, first in open_.items():
            end = max(first.ts_ms, until)
            out.append(
                LeaseInterval(
                    inst,
                    lease,
                    first.license_id,
                    first.feature,
                    first.ts_ms,
                    end,
                    True,
                    first.kind == "borrow",
                )
            )
    out.sort(key=lambda x: (x.license_id, x.feature, x.start_ms, x.instance_id, x.lease_id))
    return out, denials


def _hourly_peaks(intervals: Sequence[LeaseInterval], start_ms: int, end_ms: int) -> dict[int, int]:
    """Per UTC hour index, the most intervals held at one instant of ``[start, end)``."""
    # Ends sort before starts at one instant: a seat handed over is never two seats.
    points = sorted(
        [(max(i.start_ms, start_ms), 1) for i in intervals]
        + [(min(i.end_ms, end_ms), -1) for i in intervals]
    )
    peaks: dict[int, int] = {}
    level = 0
    for n, (ts, delta) in enumerate(points):
        level += delta
        following = points[n + 1][0] if n + 1 < len(points) else ts
        if level <= 0 or following <= ts:
            continue
        # The level holds over [ts, following): every hour that span touches sees it.
        for hour in range(ts // HOUR_MS, (following - 1) // HOUR_MS + 1):
            peaks[hour] = max(peaks.get(hour, 0), level)
    return peaks


def seat_usage(
    period: Period,
    events: Iterable[SeatEventIn],
    customers: Mapping[str, str],
    report_times: Mapping[str, int] | None = None,
) -> tuple[list[SeatPeak], list[SeatLine]]:
    """Hourly peaks and seat lines per (license, feature) of the period, from intervals."""
    start, end = period.start_ms, period.end_ms
    intervals, denied = lease_intervals(events, report_times or {})
    grouped: dict[tuple[str, str], list[LeaseInterval]] = {}
    for i in intervals:
        if i.start_ms < end and i.end_ms > start and i.end_ms > i.start_ms:
            grouped.setdefault((i.license_id, i.feature), []).append(i)
    denials: dict[tuple[str, str], int] = {}
    for e in denied:
        if start <= e.ts_ms < end:
            denials[(e.license_id, e.feature)] = denials.get((e.license_id, e.feature), 0) + 1
    peaks_out: list[SeatPeak] = []
    lines: list[SeatLine] = []
    for key in sorted(set(grouped) | set(denials)):
        lic, feat = key
        held = grouped.get(key, [])
        hourly = _hourly_peaks(held, start, end)
        peaks_out.extend(
            SeatPeak(customers.get(lic, ""), lic, feat, _hour_iso(h), p)
            for h, p in sorted(hourly.items())
        )
        lines.append(
            SeatLine(
                customers.get(lic, ""),
                lic,
                feat,
                sum(min(i.end_ms, end) - max(i.start_ms, start) for i in held),
                max(hourly.values(), default=0),
                denials.get(key, 0),
                sum(1 for i in held if i.live),
                sum(min(i.end_ms, end) - max(i.start_ms, start) for i in held if i.borrowed),
            )
        )
    return peaks_out, lines


def build_statement(  # noqa: PLR0913 - one parameter per kind of stored row, all plain values
    period: Period,
    terms: Sequence[LicenseTerms],
    used_in_period: Mapping[tuple[str, str], int],
    used_before: Mapping[tuple[str, str], int],
    topups: Iterable[TopupIn],
    seat_events: Iterable[SeatEventIn],
    findings: Iterable[FindingIn] = (),
    *,
    report_times: Mapping[str, int] | None = None,
    decrements: Mapping[tuple[str, str], int] | None = None,
    prices: PriceList | None = None,
) -> Statement:
    """The statement of ``period`` for the licenses in ``terms`` (pure).

    ``report_times`` is, per instance, the creation time (ms) of its latest accepted
    report: where a lease still live at export stops, for now. With ``prices``, the
    statement carries its charge lines (:func:`meterbox.vendorkit.prices.charge`).
    """
    customers = {t.license_id: t.customer for t in terms}
    wanted = set(customers)
    lines = meter_lines(period, terms, used_in_period, used_before, topups, decrements)
    peaks, seat_lines = seat_usage(
        period, (e for e in seat_events if e.license_id in wanted), customers, report_times
    )
    denials = {(x.license_id, x.feature): x.denials for x in seat_lines if x.denials}
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
    statement = Statement(
        str(period), tuple(lines), tuple(peaks), denials, tuple(flines), tuple(seat_lines)
    )
    if prices is None:
        return statement
    from meterbox.vendorkit.prices import charge

    products = {t.license_id: t.product for t in terms}
    return replace(statement, charges=charge(statement, prices, products))


# -------------------------------------------------------------------- shell
def bill(
    home: Path,
    period: Period,
    *,
    customer: str | None = None,
    store_url: str | None = None,
    bundle: VendorPublicBundle | None = None,
    prices: PriceList | None = None,
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
        given_back = db.usage_sums(
            conn, start_us=start_us, end_us=end_us, license_ids=ids, kind="decrement"
        )
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
        report_times = {
            inst: created // 1000 for inst, created in db.latest_report_times(conn).items()
        }
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
    return build_statement(
        period,
        terms,
        in_period,
        before,
        topups,
        seats,
        findings,
        report_times=report_times,
        decrements=given_back,
        prices=prices,
    )


def to_json_text(statement: Statement) -> str:
    return json.dumps(statement.to_json(), indent=2, sort_keys=True)
