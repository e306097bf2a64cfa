"""The pure core of report ingest: decisions over verified records. No I/O.

Records and documents in; rows to store, totals, findings, the verdict and the
receipt's content out. :mod:`meterbox.vendorkit.ingest` is the shell around it: it
reads the file, asks the store what the vendor acknowledged before, streams the
report through :class:`meterbox.ledger.ReportVerifier` and this core, and writes the
outcome in one transaction.

Finding codes decided here (stable, see also :mod:`meterbox.vendorkit.clockcheck` and
``meterbox.ledger.findings``):

================================  ========  ==============================================
``report.replay``                 critical  this exact report file was ingested before
``report.empty``                  critical  the report holds no authentic record
``license.invalid``               critical  a license in the report does not verify with
                                            this vendor's keys (forged or another vendor's)
``license.unknown``               warning   a valid license this vendor store did not issue
``license.cloned``                critical  another instance of the same license was active
                                            at the same time (two servers, one license),
                                            or, for a cluster licence of N, an N+1th;
                                            the other instances are flagged with a warning
``license.instance_replaced``     warning   a new instance for a license whose earlier
                                            instance stopped before this one started
``record.payload_invalid``        critical  an authentic usage or seat record whose payload
                                            is not what the server writes
``usage.unknown_license``         warning   records name a license the report does not carry
``usage.redelivered``             info      usage events already recorded under the same
                                            idempotency key (another node): stored, not
                                            billed again (:mod:`._redelivery`, ADR 0033)
``usage.redelivered_mismatch``    warning   the same key with another meter, kind or
                                            amount: billed once, as first stored
``report.limit_exceeded``         critical  the report is larger than a bound of
                                            :class:`IngestConfig` (file, header, records)
``ingest.error``                  critical  ingest failed on this report; nothing of it was
                                            stored but its findings and digest
``findings.omitted``              info      findings beyond the caps were counted, not kept
================================  ========  ==============================================

Bounds (:class:`IngestConfig`, docs/spec/report.md "Limits", ADR 0016): every record
amount is at most :data:`~meterbox.ledger.records.MAX_AMOUNT` and a report holds at
most ``max_records`` records, so every per-report sum fits a signed 64-bit integer;
findings are capped per code and per report; the leases remembered while streaming
are capped (the rest are looked up in the store).

Clone policy (ADR 0006): two instances whose verified activity overlaps in time are
two servers sharing one license: the report that reveals the overlap is rejected, so
the later reporter gets no receipt and, with ``report_every_days``, stops serving
seats; the other instance is flagged. A new instance whose activity starts after the
old one's last record is an honest replacement (a reinstalled server) and only warned.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from meterbox.errors import FormatError, VerificationError
from meterbox.ledger import Finding, Head, Record, RecordType, ReportResult
from meterbox.ledger import findings as F
from meterbox.ledger.records import (
    MAX_AMOUNT,
    SeatCheckout,
    SeatDenied,
    SeatRelease,
    SeatRenew,
    Usage,
    parse_payload,
)
from meterbox.licenses import License, Receipt, VendorPublicBundle
from meterbox.vendorkit._cluster import peak_concurrent
from meterbox.vendorkit._db.schema import MAX_IDEM_KEY
from meterbox.vendorkit._db.store import Activity
from meterbox.vendorkit._rows import EventInsert, LeaseOwner, PendingSeat, SeatInsert, UsageInsert
from meterbox.vendorkit.anomaly import Anomaly
from meterbox.vendorkit.clockcheck import ClockChecker

REPORT_REPLAY: Final = "report.replay"
REPORT_EMPTY: Final = "report.empty"
LICENSE_INVALID: Final = "license.invalid"
LICENSE_UNKNOWN: Final = "license.unknown"
LICENSE_CLONED: Final = "license.cloned"
LICENSE_INSTANCE_REPLACED: Final = "license.instance_replaced"
RECORD_PAYLOAD_INVALID: Final = "record.payload_invalid"
USAGE_UNKNOWN_LICENSE: Final = "usage.unknown_license"

REPORT_LIMIT_EXCEEDED: Final = "report.limit_exceeded"
INGEST_ERROR: Final = "ingest.error"
FINDINGS_OMITTED: Final = "findings.omitted"

UNKNOWN: Final = "unknown"
#: Record times the store can hold: wall times up to the end of year 9999 (what a
#: datetime can name), monotonic times whose microseconds fit a signed 64-bit integer.
MAX_WALL_MS: Final = 253_402_300_799_999
MAX_MONO_MS: Final = ((1 << 63) - 1) // 1000

Status = Literal["accepted", "accepted_with_findings", "rejected", "unusable"]

_USAGE: Final = RecordType.USAGE
_DECREMENT: Final = RecordType.USAGE_DECREMENT
_SEAT_KINDS: Final = {
    RecordType.SEAT_CHECKOUT: "checkout",
    RecordType.SEAT_RENEW: "renew",
    RecordType.SEAT_RELEASE: "release",
    RecordType.SEAT_EXPIRE: "expire",
    # A lease the site administrator removed: it ends there, like a release.
    RecordType.SEAT_REMOVED: "remove",
    # A seat lent for use with no server: it opens like a checkout and ends at its
    # return (like a release) or its expiry; billing shows its time apart.
    RecordType.SEAT_BORROWED: "borrow",
    RecordType.SEAT_RETURNED: "return",
    RecordType.SEAT_DENIED: "denied",
}
#: Record types kept in neither the usage nor the seat table, nor in ``ledger_events``:
#: chain bookkeeping that says nothing about time or use.
_NOT_EVENTS: Final = frozenset(
    {_USAGE, _DECREMENT, RecordType.EPOCH, RecordType.CHECKPOINT, RecordType.STATE, *_SEAT_KINDS}
)
_PAYLOAD_MAX: Final = 1000


# ------------------------------------------------------------------------ limits
@dataclass(frozen=True, slots=True)
class IngestConfig:
    """The resource bounds of one ingest (docs/spec/report.md "Limits").

    ``max_records * MAX_AMOUNT`` stays below 2^63, so no total of one report can
    overflow a signed 64-bit integer in Python, SQLite or PostgreSQL. ``receipt_id``
    makes the one random choice of an ingest injectable (test vectors pin a receipt's
    bytes); by default it is ``rcpt_`` and 8 random bytes in hex.
    """

    max_report_bytes: int = 512 << 20
    max_header_bytes: int = 1 << 20
    max_records: int = 4_000_000
    max_findings_per_code: int = 50
    max_findings: int = 500
    max_open_leases: int = 100_000
    receipt_id: Callable[[], str] | None = None

    def __post_init__(self) -> None:
        if self.max_records * MAX_AMOUNT >= 1 << 63:
            raise ValueError("max_records * MAX_AMOUNT must stay below 2^63")


def limit_finding(what: str, limit: int, found: int) -> Finding:
    return Finding(
        REPORT_LIMIT_EXCEEDED,
        "critical",
        f"the report's {what} exceeds the vendor's limit (expected at most {limit:,}, "
        f"found {found:,}); nothing further was read: a server writes nothing this large, "
        "export a fresh report or raise the limit in IngestConfig",
    )


#: Which findings a cap keeps first: the ones that decide the verdict.
_GRAVITY: Final = {"critical": 0, "warning": 1, "info": 2}


def cap_findings(findings: Sequence[Finding], config: IngestConfig) -> list[Finding]:
    """The first ``max_findings_per_code`` of each code, ``max_findings`` in all, in order.

    What is left out is counted: one ``findings.omitted`` (info) per code says how
    many were dropped, so a flood shows as a number, never as rows. Critical findings
    are kept ahead of warnings and warnings ahead of infos, within a code and under the
    total cap, so capping never changes the verdict.
    """
    by_code: dict[str, list[int]] = {}
    for n, f in enumerate(findings):
        by_code.setdefault(f.code, []).append(n)
    dropped: dict[str, int] = {}
    candidates: list[int] = []
    for code, indices in by_code.items():
        # The gravest first within a code too: a flood of warnings never hides a
        # critical one, nor a flood of infos a warning.
        ranked = sorted(indices, key=lambda n: _GRAVITY.get(findings[n].severity, 2))
        candidates += ranked[: config.max_findings_per_code]
        if len(ranked) > config.max_findings_per_code:
            dropped[code] = len(ranked) - config.max_findings_per_code
    candidates.sort()
    if len(candidates) > config.max_findings:
        ranked = sorted(candidates, key=lambda n: _GRAVITY.get(findings[n].severity, 2))
        chosen = set(ranked[: config.max_findings])
        for n in candidates:
            if n not in chosen:
                dropped[findings[n].code] = dropped.get(findings[n].code, 0) + 1
        candidates = sorted(chosen)
    kept = [findings[n] for n in candidates]
    kept += [
        Finding(FINDINGS_OMITTED, "info", f"{n:,} further '{code}' findings were not kept")
        for code, n in sorted(dropped.items())
    ]
    return kept


# ------------------------------------------------------------------------ outcome
@dataclass(frozen=True)
class IngestOutcome:
    """What one ingest decided. ``receipt_path`` is set only for accepted reports."""

    status: Status
    findings: tuple[Finding, ...]
    totals: Mapping[str, int]
    instance_id: str | None
    head: Head | None
    report_digest: str
    records: int = 0
    new_records: int = 0
    receipt: Receipt | None = None
    receipt_path: Path | None = None

    @property
    def accepted(self) -> bool:
        return self.status in ("accepted", "accepted_with_findings")

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "findings": [f.to_dict() for f in self.findings],
            "totals": dict(self.totals),
            "instance_id": self.instance_id,
            "head": None
            if self.head is None
            else {"seq": self.head.seq, "hash": self.head.hash.hex()},
            "receipt": None if self.receipt_path is None else str(self.receipt_path),
            "report_digest": self.report_digest,
            "records": self.records,
            "new_records": self.new_records,
        }


#: Critical findings that are evidence the server sealed into an authentic chain: a
#: cache rebuilt from the ledger, a ledger the server found shorter than its key state,
#: heads clients witnessed that the chain lacks, a TPM counter the ledger fell behind,
#: acknowledged records a recovery cut. The records of such a report are the server's
#: own and are billed; rejecting them would bill less than the server granted and
#: would keep the site from ever getting a receipt again (the evidence record rides
#: in every later report). So they accept the report with findings, stay critical in
#: every listing, and the receipt says so (docs/spec/report.md, "Verdicts").
EVIDENCE_CODES: Final = frozenset(
    {
        "state.rebuilt",
        F.LEDGER_SHORTENED,
        F.LEDGER_KEY_STATE_BEHIND,
        F.LEDGER_ACKNOWLEDGED_LOST,
        "witness.mismatch",
        "witness.head_missing",
        "tpm.ledger.rollback",
        "tpm.ledger.foreign",
        "tpm.counter.gap",
    }
)


def decide(findings: Iterable[Finding]) -> Status:
    """Any critical finding rejects, but evidence (:data:`EVIDENCE_CODES`) accepts with
    findings; warnings accept with findings; info changes nothing."""
    severities: set[str] = set()
    for f in findings:
        if f.severity == "critical" and f.code in EVIDENCE_CODES:
            severities.add("warning")
        else:
            severities.add(f.severity)
    if "critical" in severities:
        return "rejected"
    if "warning" in severities:
        return "accepted_with_findings"
    return "accepted"


# ----------------------------------------------------------------- pure checks
def check_licenses(
    documents: Sequence[bytes], bundle: VendorPublicBundle, issued_ids: Iterable[str]
) -> tuple[list[License], list[Finding]]:
    """Verify the license files a report carries; return the valid ones and findings."""
    issued = set(issued_ids)
    valid: list[License] = []
    findings: list[Finding] = []
    for n, doc in enumerate(documents):
        try:
            lic = License.from_bytes(doc, bundle)
        except (VerificationError, FormatError) as exc:
            findings.append(
                Finding(
                    LICENSE_INVALID,
                    "critical",
                    f"license {n + 1} in the report does not verify with this vendor's keys "
                    f"({exc.problem}): forged, altered or issued by another vendor",
                )
            )
            continue
        if lic.license_id in {v.license_id for v in valid}:
            continue
        valid.append(lic)
        if lic.license_id not in issued:
            findings.append(
                Finding(
                    LICENSE_UNKNOWN,
                    "warning",
                    f"license {lic.license_id} is signed by this vendor but not in this "
                    "vendor store: ingest into the store it was issued from",
                )
            )
    return valid, findings


@dataclass(frozen=True, slots=True)
class CloneCheck:
    """Findings for the reporting instance, and warnings to file against others."""

    findings: list[Finding]
    flagged: list[tuple[str, Finding]]


def check_clones(
    instance_id: str,
    license_ids: Iterable[str],
    span: tuple[int, int] | None,
    others: Iterable[Activity],
    cluster_sizes: Mapping[str, int] | None = None,
) -> CloneCheck:
    """Compare this instance's activity span with every other instance of its licenses.

    ``span`` is (first, last) wall time, in microseconds, of this instance including
    this report. ``cluster_sizes`` maps a license to how many instances may serve it
    at once (its ``cluster_size``, 1 when absent).
    Overlapping spans are a clone (critical here, a warning for the other instance)
    once more instances than the license's cluster size are active at one instant
    (for a single-server license: any overlap); the overlapping instances within
    that size are cluster members and not named. Disjoint spans are a replacement
    (warning).
    """
    wanted = set(license_ids)
    sizes = cluster_sizes or {}
    findings: list[Finding] = []
    flagged: list[tuple[str, Finding]] = []
    if span is None:
        return CloneCheck(findings, flagged)
    first, last = span
    overlapping: dict[str, list[Activity]] = {}
    for other in others:
        if other.instance_id == instance_id or other.license_id not in wanted:
            continue
        if first <= other.last_wall_us and other.first_wall_us <= last:
            overlapping.setdefault(other.license_id, []).append(other)
        else:
            findings.append(
                Finding(
                    LICENSE_INSTANCE_REPLACED,
                    "warning",
                    f"license {other.license_id} was used before by server instance "
                    f"{other.instance_id}, whose activity "
                    + (
                        "ended before this instance started"
                        if other.last_wall_us < first
                        else "started after this instance's last record"
                    ),
                )
            )
    for license_id, active in overlapping.items():
        size = sizes.get(license_id, 1)
        peak = peak_concurrent(span, ((a.first_wall_us, a.last_wall_us) for a in active))
        if peak <= size:
            continue
        shared = (
            f"{peak} servers share a license for a cluster of {size}"
            if size > 1
            else "two servers share one license"
        )
        members = f" ({peak} active at once, {size} allowed)" if size > 1 else ""
        for other in active:
            findings.append(
                Finding(
                    LICENSE_CLONED,
                    "critical",
                    f"license {license_id} is also in use by server instance "
                    f"{other.instance_id}, active at the same time: {shared}",
                )
            )
            flagged.append(
                (
                    other.instance_id,
                    Finding(
                        LICENSE_CLONED,
                        "warning",
                        f"instance {instance_id} reported license {license_id} for a "
                        f"time this instance was also active{members}",
                    ),
                )
            )
    return CloneCheck(findings, flagged)


# ------------------------------------------------------------------- pure core
def _small_payload(payload: Mapping[str, Any]) -> str:
    """The scalar fields of a record's payload as JSON, for ``ledger_events``."""
    out: dict[str, Any] = {}
    for k, v in payload.items():
        if isinstance(v, bool | int | float) or (isinstance(v, str) and len(v) <= 200):
            out[str(k)[:32]] = v
        elif isinstance(v, bytes) and len(v) <= 32:
            out[str(k)[:32]] = v.hex()
    text = json.dumps(out, sort_keys=True, allow_nan=False, default=str)
    return text if len(text) <= _PAYLOAD_MAX else "{}"


class RecordObserver(Protocol):
    """What else watches the records, fed with the payloads the core already parsed.

    The enforcement checks (:mod:`meterbox.vendorkit._enforcement`) are one: parsing
    each record once keeps a million-record ingest within its time bound.
    """

    def usage(self, record: Record, usage: Usage, license_id: str, *, decrement: bool) -> None:
        """A valid usage or decrement record the vendor has not seen before."""

    def checkout(
        self, record: Record, lease: str | None, owner: LeaseOwner, *, acked: bool
    ) -> None:
        """A valid seat checkout (``acked``: the vendor acknowledged it before)."""

    def release(self, lease: str) -> None:
        """A lease released or expired."""

    def event(self, record: Record, *, acked: bool) -> None:
        """Any record that is neither usage nor a seat event."""


@dataclass
class IngestCore:
    """Turns verified records into store rows, totals and findings. No I/O.

    Feed ``(record, acked)`` from :meth:`ReportVerifier.records` to :meth:`add`; take
    full batches with :meth:`take_usage` / :meth:`take_seats`; seat records whose lease
    was checked out in an earlier report (or so long ago in this one that its owner
    was let go, see ``max_open_leases``) wait in :attr:`unresolved` until the shell
    looks the lease up (:meth:`resolve`).
    """

    instance_id: str
    report_digest: str
    license_ids: frozenset[str]
    default_license: str
    clock: ClockChecker
    config: IngestConfig = field(default_factory=IngestConfig)
    observer: RecordObserver | None = None
    usage: list[UsageInsert] = field(default_factory=list)
    seats: list[SeatInsert] = field(default_factory=list)
    events: list[EventInsert] = field(default_factory=list)
    unresolved: list[PendingSeat] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    records: int = 0
    new_records: int = 0
    first_wall: int | None = None
    last_wall: int | None = None
    findings: list[Finding] = field(default_factory=list)
    _leases: dict[str, LeaseOwner] = field(default_factory=dict)
    _foreign: set[str] = field(default_factory=set)
    _bad_payloads: int = 0

    def add(self, record: Record, acked: bool) -> None:
        self.records += 1
        if not (0 <= record.wall_ms <= MAX_WALL_MS and 0 <= record.mono_ms <= MAX_MONO_MS):
            if not acked:
                self._bad(record, "its wall or monotonic time is outside any real clock")
            return
        self.clock.feed(record, acked)
        t = record.type
        if acked:
            # Keep lease owners of acknowledged checkouts: a later release needs them.
            kind = _SEAT_KINDS.get(t)
            if kind in {"checkout", "borrow", "release", "expire", "remove", "return"}:
                self._seat(record, kind, store=False)
            elif kind is None and self.observer is not None:
                self.observer.event(record, acked=True)
            return
        self.new_records += 1
        wall = record.wall_ms
        if self.first_wall is None or wall < self.first_wall:
            self.first_wall = wall
        if self.last_wall is None or wall > self.last_wall:
            self.last_wall = wall
        if t is _USAGE or t is _DECREMENT:
            self._usage(record, t is _DECREMENT)
        elif t not in _NOT_EVENTS:
            if self.observer is not None:
                self.observer.event(record, acked=False)
            try:
                payload = _small_payload(record.payload)
            except ValueError:  # a non-finite float: keep the record, not its payload
                payload = "{}"
            # Ledger records carry milliseconds; the store holds microseconds.
            self.events.append(
                EventInsert(
                    self.instance_id,
                    record.seq,
                    t.kind,
                    record.wall_ms * 1000,
                    record.mono_ms * 1000,
                    payload,
                    self.report_digest,
                )
            )
        else:
            kind = _SEAT_KINDS.get(t)
            if kind is not None:
                self._seat(record, kind, store=True)

    def _license(self, value: object) -> str:
        if value is None:
            return self.default_license
        lic = str(value)
        if (
            lic not in self.license_ids
            and lic not in self._foreign
            and len(self._foreign) < self.config.max_findings_per_code
        ):
            self._foreign.add(lic)
            self.findings.append(
                Finding(
                    USAGE_UNKNOWN_LICENSE,
                    "warning",
                    f"records name license {lic[:64]!r}, which the report does not carry",
                )
            )
        return lic[:64]

    def _bad(self, record: Record, why: str) -> None:
        self._bad_payloads += 1
        if self._bad_payloads <= self.config.max_findings_per_code:
            self.findings.append(
                Finding(
                    RECORD_PAYLOAD_INVALID,
                    "critical",
                    f"record {record.seq} ({record.type.name}) has an invalid payload: {why}",
                    record.seq,
                )
            )

    def _usage(self, record: Record, decrement: bool) -> None:
        try:
            usage: Usage | None = Usage.from_map(record.payload)
        except FormatError:
            usage = None
        if (
            usage is None
            or not usage.meter
            or len(usage.meter) > 64
            or not 0 <= usage.amount <= MAX_AMOUNT
        ):
            self._bad(record, f"expected a meter name and an amount of 0 to {MAX_AMOUNT:,} units")
            return
        meter, amount = usage.meter, usage.amount
        license_id = self._license(usage.license_id)
        key = usage.idempotency_key
        # A key longer than any server accepts is not one a client sent: billed on its own.
        if key is not None and not 0 < len(key) <= MAX_IDEM_KEY:
            key = None
        if self.observer is not None:
            self.observer.usage(record, usage, license_id, decrement=decrement)
        self.usage.append(
            UsageInsert(
                self.instance_id,
                record.seq,
                license_id,
                meter,
                record.wall_ms * 1000,
                amount,
                (usage.client_id or "")[:200],
                "decrement" if decrement else "increment",
                self.report_digest,
                key,
                # A keyed row is billed once the report is streamed, if it is the
                # first copy of its event (meterbox.vendorkit._redelivery).
                key is None,
            )
        )
        self.totals[meter] = self.totals.get(meter, 0) + (-amount if decrement else amount)

    def _seat(self, record: Record, kind: str, *, store: bool) -> None:
        try:
            seat = parse_payload(record.type, record.payload)
        except FormatError:
            seat = None
        if kind in {"checkout", "borrow", "denied"}:
            found = self._seat_grant(record, seat, store=store)
        else:
            found = self._seat_end(record, kind, seat, store=store)
        if found is None or not store:
            return
        owner, lease = found
        self.seats.append(
            SeatInsert(
                self.instance_id,
                record.seq,
                owner.license_id,
                owner.feature[:64],
                record.wall_ms * 1000,
                kind,
                owner.client_id,
                lease,
                self.report_digest,
            )
        )

    def _seat_grant(
        self, record: Record, seat: object, *, store: bool
    ) -> tuple[LeaseOwner, str | None] | None:
        """A checkout or a denial: who asked, and the lease a checkout opened."""
        if not isinstance(seat, SeatCheckout | SeatDenied) or not 0 < len(seat.feature) <= 64:
            if store:
                self._bad(record, "expected a feature name")
            return None
        owner = LeaseOwner(
            self._license(seat.license_id), seat.feature, (seat.client_id or "")[:200]
        )
        lease: str | None = None
        if isinstance(seat, SeatCheckout):
            if seat.lease_id is not None:
                lease = seat.lease_id[:64]
                self._leases[lease] = owner
                if len(self._leases) > self.config.max_open_leases:
                    # Memory stays bounded: the oldest owner is let go; its release, if
                    # any, is resolved from the checkout row in the store.
                    del self._leases[next(iter(self._leases))]
            if self.observer is not None:
                self.observer.checkout(record, lease, owner, acked=not store)
        return owner, lease

    def _seat_end(
        self, record: Record, kind: str, seat: object, *, store: bool
    ) -> tuple[LeaseOwner, str] | None:
        """A renewal, release or expiry: the owner of its lease, if known here."""
        if not isinstance(seat, SeatRenew | SeatRelease):
            if store:
                self._bad(record, "expected a lease id")
            return None
        lease = seat.lease_id[:64]
        known = self._leases.get(lease)
        if kind != "renew":
            self._leases.pop(lease, None)
            if self.observer is not None:
                self.observer.release(lease)
        if known is None:
            if store:
                self.unresolved.append(PendingSeat(record.seq, record.wall_ms * 1000, kind, lease))
            return None
        return known, lease

    def take_usage(self) -> list[UsageInsert]:
        out, self.usage = self.usage, []
        return out

    def take_seats(self) -> list[SeatInsert]:
        out, self.seats = self.seats, []
        return out

    def take_events(self) -> list[EventInsert]:
        out, self.events = self.events, []
        return out

    def resolve(self, owners: Mapping[str, tuple[str, str, str]]) -> None:
        """Turn waiting seat records into rows with the owners the store knew."""
        for seq, ts, kind, lease in self.unresolved:
            lic, feature, client = owners.get(lease, (self.default_license, UNKNOWN, ""))
            self.seats.append(
                SeatInsert(
                    self.instance_id, seq, lic, feature, ts, kind, client, lease, self.report_digest
                )
            )
        self.unresolved = []

    @property
    def span(self) -> tuple[int, int] | None:
        if self.first_wall is None or self.last_wall is None:
            return None
        return self.first_wall, self.last_wall

    def receipt_totals(self) -> dict[str, int]:
        """Units accepted per meter: increments minus decrements, never below zero."""
        return {m: max(0, v) for m, v in sorted(self.totals.items())}


# ------------------------------------------------------------------ the verdict
def report_findings(
    result: ReportResult, license_findings: Sequence[Finding], core: IngestCore, *, read: bool
) -> list[Finding]:
    """Everything the report itself shows, in output order, before clones and anomalies.

    ``read`` is false when the report was refused before its records were read (a
    limit, its layout, its signature or its signer): it is then not called empty.
    """
    core.clock.check_created(result.created_ms)
    findings = list(result.findings) + list(license_findings) + core.findings
    if result.created_ms > MAX_WALL_MS:
        findings.append(
            limit_finding("creation time (ms since 1970)", MAX_WALL_MS, result.created_ms)
        )
    findings += core.clock.findings()
    if result.head is None and read:
        findings.append(Finding(REPORT_EMPTY, "critical", "the report holds no records"))
    return findings


def created_ms(result: ReportResult) -> int:
    """The report's creation time as the store may hold it (an absurd one is a finding)."""
    return min(result.created_ms, MAX_WALL_MS)


def instance_span(
    span_us: tuple[int, int] | None, instance_id: str, activity: Iterable[Activity]
) -> tuple[int, int] | None:
    """This instance's whole activity span: the report's, widened by what is stored."""
    mine = [a for a in activity if a.instance_id == instance_id]
    if span_us is None or not mine:
        return span_us
    return (
        min(span_us[0], *(a.first_wall_us for a in mine)),
        max(span_us[1], *(a.last_wall_us for a in mine)),
    )


def reporting_interval(licenses: Sequence[License]) -> tuple[int | None, int]:
    """The shortest reporting interval the report's licenses ask for, with its grace."""
    asked = [(lic.report_every_days, lic.grace_days) for lic in licenses if lic.report_every_days]
    if not asked:
        return None, 0
    every, grace = min(asked)
    return every, grace


def as_finding(a: Anomaly) -> Finding:
    """An anomaly as an ingest finding: evidence, so whatever its severity it never rejects."""
    severity = "warning" if a.severity == "critical" else a.severity
    return Finding(a.code, severity, a.message, a.seq)


@dataclass(frozen=True, slots=True)
class ReceiptContent:
    """What a receipt says, fixed before the shell signs it."""

    instance_id: str
    license_ids: tuple[str, ...]
    head: Head
    previous_head_seq: int | None
    report_digest: str
    totals: Mapping[str, int]
    status: Status
    findings: Sequence[Finding]
    #: A TPM credential challenge for the instance's AK (makes the receipt version 2).
    tpm_challenge: bytes | None = None

    def receipt(self, receipt_id: str, vendor_time: datetime) -> Receipt:
        return Receipt(
            receipt_id=receipt_id,
            instance_id=self.instance_id,
            license_ids=self.license_ids,
            head_seq=self.head.seq,
            head_hash=self.head.hash.hex(),
            previous_head_seq=self.previous_head_seq,
            vendor_time=vendor_time,
            report_digest=self.report_digest,
            totals=dict(self.totals),
            status=self.status,
            finding_codes=tuple(sorted({f.code for f in self.findings})),
            tpm_challenge=self.tpm_challenge,
        )
