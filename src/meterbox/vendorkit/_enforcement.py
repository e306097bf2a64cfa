"""What the server should have enforced, checked by the vendor from the records alone.

Pure: records and signed licenses in, findings out. The server enforces seats, quotas
and deadlines from its own state; a customer who edits or deletes that state (or runs
a patched server) can make it grant what the licenses do not allow. The records are
sealed as they are written, so the vendor replays the rules over them and names every
grant the rules forbid (ADR 0016, docs/spec/report.md "Enforcement findings").

=====================================  ========  =========================================
``enforcement.seats_exceeded``         warning   more leases of a feature live at once
                                                 than its seats plus overdraft
``enforcement.usage_over_limit``       warning   a ``refuse`` meter counted more units in
                                                 a period than its limit plus top-ups
``enforcement.granted_after_deadline`` warning   usage or a checkout dated after the
                                                 license expired, or after the report
                                                 deadline plus grace
``enforcement.decrement_uncovered``    critical  units given back that were never charged
                                                 (per meter, and per Cryptolens data
                                                 object, client ``cryptolens/<id>``): a
                                                 refund the bill must not take
=====================================  ========  =========================================

Why these severities: the first three are grants the site received and used, so the
report is accepted with findings and every unit is billed; rejecting it would bill
less than the server granted. An uncovered decrement would lower the bill below what
was charged, so it rejects the report.

Streaming and bounded: per (license, meter, period) a running sum and its extreme,
per lease its owner while live; the shell supplies what earlier reports stored
(:class:`Prior`) once the report has been read, and :meth:`EnforcementCheck.findings`
combines the two, since a constant offset moves a running maximum by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from meterbox.compat.rules import CLIENT_PREFIX
from meterbox.errors import FormatError
from meterbox.ledger import Finding, Record, RecordType
from meterbox.ledger.records import (
    ReceiptImported,
    TopupImported,
    Usage,
    parse_payload,
)
from meterbox.licenses import License
from meterbox.vendorkit._ingest_core import MAX_WALL_MS
from meterbox.vendorkit._rows import LeaseOwner

SEATS_EXCEEDED: Final = "enforcement.seats_exceeded"
USAGE_OVER_LIMIT: Final = "enforcement.usage_over_limit"
GRANTED_AFTER_DEADLINE: Final = "enforcement.granted_after_deadline"
DECREMENT_UNCOVERED: Final = "enforcement.decrement_uncovered"

_DAY_MS: Final = 86_400_000

#: (license, meter, period key): the unit limits and top-ups are kept per period.
MeterKey = tuple[str, str, str]
#: (license, meter, data object id or ""): what a decrement must be covered by.
SlotKey = tuple[str, str, str]


def period_key(period: str, wall_ms: int) -> str:
    """The meter period a record falls in: ``total`` or the UTC month (``2026-01``).

    The same keys as the server's meter book (``server/_core/meters.py``).
    """
    if period == "total":
        return "total"
    return datetime.fromtimestamp(wall_ms / 1000, UTC).strftime("%Y-%m")


def data_object(client_id: str | None) -> str:
    """The Cryptolens data object a usage record changed, or ``""`` for any other client.

    The Cryptolens layer writes data-object changes with the client id
    ``CLIENT_PREFIX + <object id>``, as ``meterbox.compat.rules.charged_from_records``
    reads them; that function caps each give-back as the server does, this check keeps
    the uncapped running sum so it can name what was given back beyond the charge.
    """
    client = client_id or ""
    if client.startswith(CLIENT_PREFIX) and client[len(CLIENT_PREFIX) :].isdigit():
        return client[len(CLIENT_PREFIX) :]
    return ""


def period_bounds_us(key: str) -> tuple[int | None, int | None]:
    """[start, end) of a period key in microseconds; ``total`` is unbounded."""
    if key == "total":
        return None, None
    year, month = (int(x) for x in key.split("-"))
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * 1_000_000, int(end.timestamp()) * 1_000_000


@dataclass(frozen=True, slots=True)
class Prior:
    """What the store holds from this instance's earlier reports, for the touched keys."""

    #: Net units counted per (license, meter, period) before this report.
    used: Mapping[MeterKey, int] = field(default_factory=dict)
    #: Units of top-ups imported per (license, meter, period) before this report.
    topups: Mapping[MeterKey, int] = field(default_factory=dict)
    #: Net units charged per (license, meter, data object or "") before this report.
    charged: Mapping[SlotKey, int] = field(default_factory=dict)
    #: (license, feature) of every lease live when this report begins.
    live: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: The vendor time of the last receipt the server imported before this report (ms).
    receipt_ms: int | None = None


@dataclass
class _Run:
    """A running sum and its most extreme value: enough to add an earlier offset later."""

    value: int = 0
    peak: int = 0
    peak_seq: int | None = None

    def add(self, delta: int, seq: int, *, lowest: bool = False) -> None:
        self.value += delta
        if (self.value < self.peak) if lowest else (self.value > self.peak):
            self.peak, self.peak_seq = self.value, seq


@dataclass
class EnforcementCheck:
    """Replays seat, quota and deadline rules over one report's records (no I/O).

    It is the ingest core's :class:`~meterbox.vendorkit._ingest_core.RecordObserver`:
    the core hands it every authentic record's parsed payload in order (records the
    vendor acknowledged before only update the state: leases and receipts). Call
    :meth:`start` first; at the end ask :meth:`touched` which keys need a
    :class:`Prior` and call :meth:`findings`.
    """

    licenses: Mapping[str, License]
    default_license: str
    #: Leases remembered while live. Beyond this the oldest is let go and no longer
    #: counted: memory stays bounded, and a finding can be missed but never invented.
    max_leases: int = 100_000
    _leases: dict[str, tuple[str, str]] = field(default_factory=dict)
    _live: dict[tuple[str, str], int] = field(default_factory=dict)
    _month: tuple[int, int, str] = (0, -1, "")
    _peak_seats: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    _used: dict[MeterKey, _Run] = field(default_factory=dict)
    _topups: dict[MeterKey, int] = field(default_factory=dict)
    _charged: dict[SlotKey, _Run] = field(default_factory=dict)
    _receipt_ms: int | None = None
    _late: list[tuple[int, str]] = field(default_factory=list)
    _late_count: int = 0

    # ---------------------------------------------------------------- feeding
    def event(self, record: Record, *, acked: bool) -> None:
        """Receipt imports move the deadline; top-ups raise a meter's limit."""
        t = record.type
        if t not in _READ or not 0 <= record.wall_ms <= MAX_WALL_MS:
            return
        try:
            payload = parse_payload(t, record.payload)
        except FormatError:
            return  # ingest names an unreadable payload; nothing to enforce on it
        if isinstance(payload, ReceiptImported):
            when = iso_ms(payload.vendor_time)
            if when is not None:
                self._receipt_ms = max(self._receipt_ms or when, when)
        elif isinstance(payload, TopupImported) and not acked:
            key = self.meter_key(payload.license_id, payload.meter, record.wall_ms)
            if key is not None:
                # A top-up raises the limit from its import on: it lowers the running
                # "units over the limit" the same way a decrement would.
                self._topups[key] = self._topups.get(key, 0) + payload.amount
                self._used.setdefault(key, _Run()).add(-payload.amount, record.seq)

    def checkout(
        self, record: Record, lease: str | None, owner: LeaseOwner, *, acked: bool
    ) -> None:
        key = (owner.license_id, owner.feature)
        if lease is not None and lease not in self._leases:
            self._leases[lease] = key
            self._live[key] = self._live.get(key, 0) + 1
            if len(self._leases) > self.max_leases:
                self.release(next(iter(self._leases)))
        if acked:
            return
        self._deadline(record, owner.license_id, "seat checkout")
        live = self._live.get(key, 0)
        if live > self._peak_seats.get(key, (0, 0))[0]:
            self._peak_seats[key] = (live, record.seq)

    def release(self, lease: str) -> None:
        key = self._leases.pop(lease, None)
        if key is not None:
            self._live[key] -= 1

    def usage(self, record: Record, usage: Usage, license_id: str, *, decrement: bool) -> None:
        lic = license_id
        delta = -usage.amount if decrement else usage.amount
        key = self.meter_key(lic, usage.meter, record.wall_ms)
        if key is not None:
            self._used.setdefault(key, _Run()).add(delta, record.seq)
        obj = data_object(usage.client_id)
        self._charged.setdefault((lic, usage.meter, obj), _Run()).add(
            delta, record.seq, lowest=True
        )
        if not decrement:
            self._deadline(record, lic, f"usage of {usage.meter}")

    def meter_key(self, license_id: str | None, meter: str, wall_ms: int) -> MeterKey | None:
        lic = license_id or self.default_license
        terms = self.licenses.get(lic)
        m = None if terms is None else terms.meters.get(meter)
        if m is None:
            return None
        if m.period == "total":
            return (lic, meter, "total")
        start, end, month = self._month
        if not start <= wall_ms < end:
            month = period_key(m.period, wall_ms)
            lo, hi = period_bounds_us(month)
            start, end = (lo or 0) // 1000, (hi or 0) // 1000
            self._month = (start, end, month)
        return (lic, meter, month)

    def _deadline(self, record: Record, license_id: str, what: str) -> None:
        terms = self.licenses.get(license_id)
        if terms is None:
            return
        limit = self._limit_ms(terms)
        if limit is not None and record.wall_ms > limit[0]:
            self._late_count += 1
            if len(self._late) < _MAX_NAMED:
                self._late.append((record.seq, f"{what} at {_fmt(record.wall_ms)}, {limit[1]}"))

    def _limit_ms(self, terms: License) -> tuple[int, str] | None:
        """The earliest end of granting: expiry, or the receipt deadline plus grace."""
        ends: list[tuple[int, str]] = []
        if terms.expires is not None:
            ends.append(
                (_ms(terms.expires), f"after the license expired {_fmt(_ms(terms.expires))}")
            )
        if terms.report_every_days is not None and self._receipt_ms is not None:
            due = self._receipt_ms + (terms.report_every_days + terms.grace_days) * _DAY_MS
            ends.append((due, f"after the report deadline plus grace ({_fmt(due)})"))
        return min(ends) if ends else None

    # ----------------------------------------------------------------- asking
    def start(self, prior: Prior) -> None:
        """Before feeding: leases live and the last receipt, as the store knows them."""
        for lease, key in prior.live.items():
            if lease not in self._leases:
                self._leases[lease] = key
                self._live[key] = self._live.get(key, 0) + 1
        self._receipt_ms = prior.receipt_ms

    def touched(self) -> tuple[set[MeterKey], set[SlotKey]]:
        return set(self._used) | set(self._topups), set(self._charged)

    def findings(self, prior: Prior) -> list[Finding]:
        out: list[Finding] = []
        for (lic, feature), (peak, seq) in sorted(self._peak_seats.items()):
            terms = self.licenses.get(lic)
            f = None if terms is None else terms.features.get(feature)
            if f is not None and peak > f.seats + f.overdraft:
                out.append(
                    Finding(
                        SEATS_EXCEEDED,
                        "warning",
                        f"license {lic} feature {feature}: {peak} leases were live at once, "
                        f"the license allows {f.seats} seats plus {f.overdraft} overdraft; the "
                        "server's seat state was edited or lost (all seat-hours are billed)",
                        seq,
                    )
                )
        for key, run in sorted(self._used.items()):
            lic, meter, period = key
            m = self.licenses[lic].meters[meter]
            if m.over_limit != "refuse" or m.limit is None:
                continue
            allowed = m.limit + prior.topups.get(key, 0)
            excess = prior.used.get(key, 0) + run.peak - allowed
            if excess > 0:
                out.append(
                    Finding(
                        USAGE_OVER_LIMIT,
                        "warning",
                        f"license {lic} meter {meter} ({period}): {excess:,} units were "
                        f"counted beyond the limit of {m.limit:,} plus top-ups, on a meter "
                        "that refuses beyond it; the server's quota state was edited or lost "
                        "(every unit is billed)",
                        run.peak_seq,
                    )
                )
        if self._late_count:
            first_seq, text = self._late[0]
            more = self._late_count - 1
            out.append(
                Finding(
                    GRANTED_AFTER_DEADLINE,
                    "warning",
                    f"{self._late_count:,} grant(s) the license no longer allowed, the first: "
                    f"{text}" + (f" ({more:,} more)" if more else ""),
                    first_seq,
                )
            )
        for slot, run in sorted(self._charged.items()):
            low = prior.charged.get(slot, 0) + run.peak
            if low < 0:
                lic, meter, obj = slot
                where = f"data object {obj}" if obj else f"meter {meter}"
                out.append(
                    Finding(
                        DECREMENT_UNCOVERED,
                        "critical",
                        f"license {lic} {where}: {-low:,} units were given back beyond what "
                        "was charged; the server's usage state was edited, and the report "
                        "is not billed until the site explains it",
                        run.peak_seq,
                    )
                )
        return out


_READ: Final = frozenset({RecordType.TOPUP_IMPORTED, RecordType.RECEIPT_IMPORTED})
#: Late grants named in the finding's message; the rest are counted.
_MAX_NAMED: Final = 1


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _fmt(wall_ms: int) -> str:
    try:
        return datetime.fromtimestamp(wall_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError, OSError):
        return f"{wall_ms} ms"


def iso_ms(text: str | None) -> int | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return _ms(t if t.tzinfo else t.replace(tzinfo=UTC))


__all__ = [
    "DECREMENT_UNCOVERED",
    "GRANTED_AFTER_DEADLINE",
    "SEATS_EXCEEDED",
    "USAGE_OVER_LIMIT",
    "EnforcementCheck",
    "Prior",
    "data_object",
    "iso_ms",
    "period_bounds_us",
    "period_key",
]
