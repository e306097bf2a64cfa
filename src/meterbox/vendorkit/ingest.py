"""Report ingest: verify a server's report, store its usage once, sign a receipt.

The decisions are pure (:class:`IngestCore`, :func:`check_licenses`,
:func:`check_clones`, :func:`decide`): records and documents in, rows, totals and
findings out. :func:`ingest` is the shell: it reads the file, asks the store what the
vendor acknowledged before for this instance, streams the report through
:class:`meterbox.ledger.ReportVerifier` and the core, and writes the outcome.

Invariants:

* nothing from a rejected report is billed: every usage and seat row of one report is
  written inside one transaction that is rolled back when any finding is critical;
* the same record is never billed twice: rows are unique on (instance, seq) and
  inserted with ``ON CONFLICT DO NOTHING``, and records at or before the acknowledged
  head are not even offered; totals count only records after that head;
* the same report file is never ingested twice: its SHA-256 is looked up first and a
  replay is rejected (``report.replay``) before anything else happens;
* a receipt is signed only for an accepted report, and only after the store holds
  its rows, its findings and the new acknowledged head;
* memory stays bounded whatever the report's length: rows leave in batches of
  :data:`BATCH_ROWS`; only leases still open are remembered;
* every new record that is neither usage nor a seat event (heartbeat, boot, shutdown,
  recovery, clock step, receipt import, ...) is stored in ``ledger_events`` with its
  monotonic time, and the report's creation time and its licenses' reporting interval
  in ``report_meta``: what the anomaly detectors read later;
* the anomaly detectors (:mod:`meterbox.vendorkit.anomaly`, rules and learned) run over
  the instance's stored history once the report's rows are written, unless the ingest
  rules already reject it; their findings are evidence (``warning`` or ``info``, a
  ``critical`` one is lowered to ``warning``) and never turn an accepted report into a
  rejected one. The clock and heartbeat checks are not run twice: ingest runs
  :class:`~meterbox.vendorkit.clockcheck.ClockChecker` over every record as it streams, the
  same implementation the detectors use on demand.

Finding codes added here (stable, see also :mod:`meterbox.vendorkit.clockcheck` and
``meterbox.ledger.findings``):

================================  ========  ==============================================
``report.replay``                 critical  this exact report file was ingested before
``report.empty``                  critical  the report holds no authentic record
``license.invalid``               critical  a license in the report does not verify with
                                            this vendor's keys (forged or another vendor's)
``license.unknown``               warning   a valid license this vendor store did not issue
``license.cloned``                critical  another instance of the same license was active
                                            at the same time (two servers, one license);
                                            the other instance is flagged with a warning
``license.instance_replaced``     warning   a new instance for a license whose earlier
                                            instance stopped before this one started
``record.payload_invalid``        critical  an authentic usage or seat record whose payload
                                            is not what the server writes
``usage.unknown_license``         warning   records name a license the report does not carry
================================  ========  ==============================================

Clone policy (ADR 0006): two instances whose verified activity overlaps in time are
two servers sharing one license: the report that reveals the overlap is rejected, so
the later reporter gets no receipt and, with ``report_every_days``, stops serving
seats; the other instance is flagged. A new instance whose activity starts after the
old one's last record is an honest replacement (a reinstalled server) and only warned.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from meterbox._fs import disk_error, is_disk_full, publish, stage_file
from meterbox.clock import SystemClock
from meterbox.errors import ConfigError, FormatError, VerificationError
from meterbox.ledger import (
    ChainState,
    Finding,
    Head,
    Known,
    Record,
    RecordType,
    ReportResult,
    ReportVerifier,
)
from meterbox.ledger import findings as F
from meterbox.ledger.records import (
    SeatCheckout,
    SeatDenied,
    SeatRelease,
    SeatRenew,
    Usage,
    parse_payload,
)
from meterbox.licenses import License, Receipt, VendorPublicBundle
from meterbox.vendorkit._db.store import (
    Activity,
    FindingRow,
    InstanceRow,
    ReceiptRow,
    ReportMeta,
    ReportRow,
    ReportSpan,
    VendorStore,
)
from meterbox.vendorkit.anomaly import (
    INGEST_REPORTS,
    INGEST_WINDOW_MS,
    Anomaly,
    Pending,
    Thresholds,
    detect,
)
from meterbox.vendorkit.anomaly import instance_history as stored_history
from meterbox.vendorkit.clockcheck import ClockChecker, ClockPolicy
from meterbox.vendorkit.keys import VendorKeys

REPORT_REPLAY: Final = "report.replay"
REPORT_EMPTY: Final = "report.empty"
LICENSE_INVALID: Final = "license.invalid"
LICENSE_UNKNOWN: Final = "license.unknown"
LICENSE_CLONED: Final = "license.cloned"
LICENSE_INSTANCE_REPLACED: Final = "license.instance_replaced"
RECORD_PAYLOAD_INVALID: Final = "record.payload_invalid"
USAGE_UNKNOWN_LICENSE: Final = "usage.unknown_license"

BATCH_ROWS: Final = 50_000
UNKNOWN: Final = "unknown"
#: Findings that mean "this file is not something we can judge", not "this report is bad".
_UNUSABLE: Final = frozenset({F.REPORT_MALFORMED, F.REPORT_UNKNOWN_VERSION})

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
    RecordType.SEAT_DENIED: "denied",
}
#: Record types kept in neither the usage nor the seat table, nor in ``ledger_events``:
#: chain bookkeeping that says nothing about time or use.
_NOT_EVENTS: Final = frozenset(
    {_USAGE, _DECREMENT, RecordType.EPOCH, RecordType.CHECKPOINT, *_SEAT_KINDS}
)
_PAYLOAD_MAX: Final = 1000


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


def decide(findings: Iterable[Finding]) -> Status:
    """Any critical finding rejects; warnings accept with findings; info changes nothing."""
    severities = {f.severity for f in findings}
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
) -> CloneCheck:
    """Compare this instance's activity span with every other instance of its licenses.

    ``span`` is (first, last) wall time, in microseconds, of this instance including
    this report.
    Overlapping spans are a clone (critical here, a warning for the other instance);
    disjoint spans a replacement (warning).
    """
    wanted = set(license_ids)
    findings: list[Finding] = []
    flagged: list[tuple[str, Finding]] = []
    if span is None:
        return CloneCheck(findings, flagged)
    first, last = span
    for other in others:
        if other.instance_id == instance_id or other.license_id not in wanted:
            continue
        if first <= other.last_wall_us and other.first_wall_us <= last:
            findings.append(
                Finding(
                    LICENSE_CLONED,
                    "critical",
                    f"license {other.license_id} is also in use by server instance "
                    f"{other.instance_id}, active at the same time: two servers share one "
                    "license",
                )
            )
            flagged.append(
                (
                    other.instance_id,
                    Finding(
                        LICENSE_CLONED,
                        "warning",
                        f"instance {instance_id} reported license {other.license_id} for a "
                        "time this instance was also active",
                    ),
                )
            )
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
    return CloneCheck(findings, flagged)


# ------------------------------------------------------------------- pure core
UsageTuple = tuple[str, int, str, str, int, int, str, str, str]
SeatTuple = tuple[str, int, str, str, int, str, str, str | None, str]
EventTuple = tuple[str, int, str, int, int, str, str]


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


@dataclass
class IngestCore:
    """Turns verified records into store rows, totals and findings. No I/O.

    Feed ``(record, acked)`` from :meth:`ReportVerifier.records` to :meth:`add`; take
    full batches with :meth:`take_usage` / :meth:`take_seats`; seat records whose lease
    was checked out in an earlier report wait in :attr:`unresolved` until the shell
    looks the lease up (:meth:`resolve`).
    """

    instance_id: str
    report_digest: str
    license_ids: frozenset[str]
    default_license: str
    clock: ClockChecker
    usage: list[UsageTuple] = field(default_factory=list)
    seats: list[SeatTuple] = field(default_factory=list)
    events: list[EventTuple] = field(default_factory=list)
    unresolved: list[tuple[int, int, str, str]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    records: int = 0
    new_records: int = 0
    first_wall: int | None = None
    last_wall: int | None = None
    findings: list[Finding] = field(default_factory=list)
    _leases: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    _foreign: set[str] = field(default_factory=set)
    _bad_payloads: int = 0

    def add(self, record: Record, acked: bool) -> None:
        self.records += 1
        self.clock.feed(record, acked)
        t = record.type
        if acked:
            # Keep lease owners of acknowledged checkouts: a later release needs them.
            if t is RecordType.SEAT_CHECKOUT:
                self._seat(record, "checkout", store=False)
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
            try:
                payload = _small_payload(record.payload)
            except ValueError:  # a non-finite float: keep the record, not its payload
                payload = "{}"
            self.events.append(
                (
                    self.instance_id,
                    record.seq,
                    t.kind,
                    record.wall_ms,
                    record.mono_ms,
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
        if lic not in self.license_ids and lic not in self._foreign:
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
        if self._bad_payloads <= 50:
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
            or not 0 <= usage.amount < 2**62
        ):
            self._bad(record, "expected a meter name and an amount of 0 to 2^62 units")
            return
        meter, amount = usage.meter, usage.amount
        self.usage.append(
            (
                self.instance_id,
                record.seq,
                self._license(usage.license_id),
                meter,
                record.wall_ms * 1000,
                amount,
                (usage.client_id or "")[:200],
                "decrement" if decrement else "increment",
                self.report_digest,
            )
        )
        self.totals[meter] = self.totals.get(meter, 0) + (-amount if decrement else amount)

    def _seat(self, record: Record, kind: str, *, store: bool) -> None:
        try:
            seat = parse_payload(record.type, record.payload)
        except FormatError:
            seat = None
        lease: str | None = None
        if isinstance(seat, SeatCheckout | SeatDenied):
            feature = seat.feature
            if not feature or len(feature) > 64:
                seat = None
        if kind in {"checkout", "denied"}:
            if not isinstance(seat, SeatCheckout | SeatDenied):
                if store:
                    self._bad(record, "expected a feature name")
                return
            lic = self._license(seat.license_id)
            owner = (lic, seat.feature, (seat.client_id or "")[:200])
            if isinstance(seat, SeatCheckout) and seat.lease_id is not None:
                lease = seat.lease_id[:64]
                self._leases[lease] = owner
        else:
            if not isinstance(seat, SeatRenew | SeatRelease):
                if store:
                    self._bad(record, "expected a lease id")
                return
            lease = seat.lease_id[:64]
            known = self._leases.get(lease)
            if kind != "renew":
                self._leases.pop(lease, None)
            if known is None:
                if store:
                    self.unresolved.append((record.seq, record.wall_ms * 1000, kind, lease))
                return
            owner = known
        if store:
            self.seats.append(
                (
                    self.instance_id,
                    record.seq,
                    owner[0],
                    owner[1][:64],
                    record.wall_ms * 1000,
                    kind,
                    owner[2],
                    lease,
                    self.report_digest,
                )
            )

    def take_usage(self) -> list[UsageTuple]:
        out, self.usage = self.usage, []
        return out

    def take_seats(self) -> list[SeatTuple]:
        out, self.seats = self.seats, []
        return out

    def take_events(self) -> list[EventTuple]:
        out, self.events = self.events, []
        return out

    def resolve(self, owners: Mapping[str, tuple[str, str, str]]) -> None:
        """Turn waiting seat records into rows with the owners the store knew."""
        for seq, ts, kind, lease in self.unresolved:
            lic, feature, client = owners.get(lease, (self.default_license, UNKNOWN, ""))
            self.seats.append(
                (self.instance_id, seq, lic, feature, ts, kind, client, lease, self.report_digest)
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


# ----------------------------------------------------------------------- shell


def _instance_named(path: Path, ledger_keys: Mapping[bytes, X25519PrivateKey]) -> bytes:
    """The instance id the report's header names, or ``b""`` when it names none."""
    verifier = ReportVerifier(ledger_keys)
    with path.open("rb") as stream:
        verifier.read_header(stream)
    return verifier.result.instance_id


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_input(path: Path) -> None:
    if not path.exists():
        raise ConfigError(
            "report file not found",
            expected="a report exported by `meterbox server export`",
            found=str(path),
            hint="Check the path",
        )
    if not path.is_file():
        raise ConfigError("report path is not a file", expected="a report file", found=str(path))


def _known(row: InstanceRow | None) -> Known | None:
    if row is None or row.acked_seq is None or row.acked_hash is None:
        return None
    chain = None
    if row.chain_secret is not None and row.chain_epoch is not None:
        chain = ChainState(int(row.chain_epoch), bytes(row.chain_secret))
    return Known(
        Head(int(row.acked_seq), bytes.fromhex(row.acked_hash)),
        chain,
        None if row.instance_public_key is None else bytes(row.instance_public_key),
    )


def _unusable(result: ReportResult) -> bool:
    if not result.instance_id and any(f.code in _UNUSABLE for f in result.findings):
        return True
    return result.records == 0 and F.REPORT_WRONG_VENDOR_KEY in result.codes


def _flush(conn: Connection, store: VendorStore, core: IngestCore) -> None:
    store.insert_usage(core.take_usage(), conn)
    store.insert_seat_events(core.take_seats(), conn)
    # Ledger records carry milliseconds; the store holds microseconds.
    events = [(i, s, k, w * 1000, m * 1000, p, d) for i, s, k, w, m, p, d in core.take_events()]
    store.insert_ledger_events(events, conn)


def _us(span: tuple[int, int] | None) -> tuple[int, int] | None:
    return None if span is None else (span[0] * 1000, span[1] * 1000)


def ingest(
    home: Path,
    report_path: Path,
    *,
    store_url: str | None = None,
    receipt_out: Path | None = None,
    now: datetime | None = None,
    policy: ClockPolicy | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestOutcome:
    """Verify and store one report; sign and write a receipt when it is accepted."""
    report_path = Path(report_path)
    _check_input(report_path)
    vendor_now = now or SystemClock().now()
    now_ms = int(vendor_now.timestamp() * 1000)
    keys = VendorKeys.load(home)
    ledger_keys: dict[bytes, X25519PrivateKey] = {
        kid: pair.ledger_private for kid, pair in keys.pairs.items()
    }
    digest = file_digest(report_path)
    try:
        with VendorStore.open(store_url, home=home) as store, store.engine.connect() as conn:
            if store.report_known(digest, conn):
                finding = Finding(
                    REPORT_REPLAY,
                    "critical",
                    f"this exact report (sha256 {digest[:16]}...) was ingested before; "
                    "nothing was billed again",
                )
                iid = _instance_named(report_path, ledger_keys)
                return IngestOutcome(
                    "rejected",
                    (finding,),
                    {},
                    iid.hex() if iid else None,
                    None,
                    digest,
                )
            return _ingest_new(
                conn, store, keys, ledger_keys, report_path, digest, vendor_now, now_ms,
                policy, on_progress, receipt_out,
            )  # fmt: skip
    except OperationalError as exc:
        if not is_disk_full(exc):
            raise
        # The transaction was rolled back with the failed write: nothing is recorded.
        raise disk_error(
            "the vendor store cannot be written; nothing of this ingest was recorded",
            exc.orig if isinstance(exc.orig, BaseException) else exc,
            hint="free disk space where the store lives and ingest the same report again",
        ) from exc


def _ingest_new(
    conn: Connection,
    store: VendorStore,
    keys: VendorKeys,
    ledger_keys: Mapping[bytes, X25519PrivateKey],
    report_path: Path,
    digest: str,
    vendor_now: datetime,
    now_ms: int,
    policy: ClockPolicy | None,
    on_progress: Callable[[int], None] | None,
    receipt_out: Path | None,
) -> IngestOutcome:
    # Closed by the ``with`` below that verifies the rest of the stream.
    stream = report_path.open("rb")
    verifier = ReportVerifier(ledger_keys, on_progress=on_progress)
    header = verifier.read_header(stream)
    # A header that fails half-way still names what it could: take that from the result.
    raw_iid = header.instance_id if header else verifier.result.instance_id
    instance_hex = raw_iid.hex()
    docs = list(header.licenses) if header else verifier.result.licenses
    issued = [row.license_id for row in store.list_licenses()]
    licenses, license_findings = check_licenses(docs, keys.bundle, issued)
    license_ids = [lic.license_id for lic in licenses]
    inst_row = store.get_instance(instance_hex) if instance_hex else None
    known = _known(inst_row)
    leases = store.open_leases(instance_hex, conn) if inst_row is not None else set()
    core = IngestCore(
        instance_id=instance_hex,
        report_digest=digest,
        license_ids=frozenset(license_ids),
        default_license=license_ids[0]
        if license_ids
        else (inst_row.license_id if inst_row else UNKNOWN),
        clock=ClockChecker(vendor_now_ms=now_ms, policy=policy, open_leases=leases),
    )
    verifier.known = known
    # End the read transaction the look-ups above began: from here on everything this
    # report writes is one transaction, committed only once the report is judged.
    conn.rollback()
    staged: Path | None = None
    receipt_path: Path | None = None
    try:
        with stream:
            for record, acked in verifier.records():
                core.add(record, acked)
                if len(core.usage) + len(core.seats) + len(core.events) >= BATCH_ROWS:
                    _flush(conn, store, core)
        result = verifier.result
        if _unusable(result):
            conn.rollback()
            return IngestOutcome(
                "unusable", tuple(result.findings), {}, instance_hex or None, None, digest
            )
        if core.unresolved:
            core.resolve(store.lease_owners(instance_hex, (u[3] for u in core.unresolved), conn))
        _flush(conn, store, core)
        core.clock.check_created(result.created_ms)
        findings = list(result.findings) + license_findings + core.findings
        findings += core.clock.findings()
        if result.head is None:
            findings.append(Finding(REPORT_EMPTY, "critical", "the report holds no records"))
        ledger_ok = not result.critical and result.head is not None
        activity = store.activity_for_licenses(license_ids, conn)
        span = _us(core.span)
        mine = [a for a in activity if a.instance_id == instance_hex]
        if span is not None and mine:
            span = (
                min(span[0], *(a.first_wall_us for a in mine)),
                max(span[1], *(a.last_wall_us for a in mine)),
            )
        clones = check_clones(instance_hex, license_ids, span, activity)
        findings += clones.findings
        every, grace = _interval(licenses)
        pending = Pending(
            digest,
            result.base_seq,
            result.head.seq if result.head is not None else -1,
            result.created_ms,
            now_ms,
            every,
            grace,
        )
        if decide(findings) != "rejected" and result.head is not None and instance_hex:
            findings += anomaly_findings(
                conn,
                instance_hex,
                core.default_license,
                pending,
                since_ms=None if core.first_wall is None else core.first_wall - INGEST_WINDOW_MS,
                policy=policy,
            )
        status = decide(findings)
        if status == "rejected":
            conn.rollback()  # drop every row this report wrote; keep only its verdict
        receipt: Receipt | None = None
        document = b""
        if status != "rejected" and result.head is not None:
            receipt = Receipt(
                receipt_id="rcpt_" + secrets.token_hex(8),
                instance_id=instance_hex,
                license_ids=tuple(license_ids),
                head_seq=result.head.seq,
                head_hash=result.head.hash.hex(),
                previous_head_seq=None if known is None else known.head.seq,
                vendor_time=vendor_now,
                report_digest=digest,
                totals=core.receipt_totals(),
                status=status,
                finding_codes=tuple(sorted({f.code for f in findings})),
            )
            document = receipt.sign(keys.signer())
        _record(
            conn, store, core, result, findings, clones, status, receipt, document,
            inst_row, license_ids, vendor_now, ledger_ok, pending,
        )  # fmt: skip
        receipt_path = None
        if receipt is not None:
            receipt_path = receipt_out or report_path.with_name(report_path.name + ".receipt")
            staged = _stage_receipt(receipt_path, document)
        conn.commit()
    except BaseException:
        conn.rollback()
        if staged is not None:
            with contextlib.suppress(OSError):
                staged.unlink()
        raise
    if staged is not None and receipt_path is not None:
        _publish_receipt(staged, receipt_path)
    return IngestOutcome(
        status,
        tuple(findings),
        core.receipt_totals() if receipt is not None else {},
        instance_hex,
        result.head,
        digest,
        core.records,
        core.new_records,
        receipt,
        receipt_path,
    )


def _stage_receipt(receipt_path: Path, document: bytes) -> Path:
    """Write the receipt under a temporary name, before the ingest commits.

    The receipt's bytes are on disk before the ingest commits and take their name
    only after it (:func:`_publish_receipt`): a stored ingest always had its receipt
    written, and no receipt exists for an ingest that was rolled back.
    """
    try:
        return stage_file(receipt_path, document, mode=0o644)
    except OSError as exc:
        raise disk_error(
            f"the receipt could not be written to {receipt_path}; "
            "nothing of this ingest was recorded",
            exc,
            hint="free disk space (or choose another --receipt-out) and ingest "
            "the same report again",
        ) from exc


def _publish_receipt(staged: Path, receipt_path: Path) -> None:
    try:
        publish(staged, receipt_path)
    except OSError as exc:
        raise disk_error(
            f"the ingest is recorded and its receipt written to {staged}, "
            f"but it could not be renamed to {receipt_path}",
            exc,
            hint=f"rename {staged} to {receipt_path} and send it to the site",
        ) from exc


def _interval(licenses: Sequence[License]) -> tuple[int | None, int]:
    """The shortest reporting interval the report's licenses ask for, with its grace."""
    asked = [(lic.report_every_days, lic.grace_days) for lic in licenses if lic.report_every_days]
    if not asked:
        return None, 0
    every, grace = min(asked)
    return every, grace


def anomaly_findings(
    conn: Connection,
    instance_id: str,
    license_id: str,
    pending: Pending,
    *,
    since_ms: int | None = None,
    policy: ClockPolicy | None = None,
) -> list[Finding]:
    """The anomaly detectors over the instance's stored history, judging ``pending``.

    Runs inside the ingest transaction, after the report's rows are written. Bounded:
    the last :data:`INGEST_REPORTS` reports, records dated from ``since_ms`` (ingest
    passes :data:`INGEST_WINDOW_MS` before the report's earliest new record), usage
    summed per minute. Clock checks are left out (ingest ran them on every
    record); so are clone checks (:func:`check_clones` decides those, critically).
    """
    history = stored_history(
        conn,
        instance_id,
        license_id=license_id,
        pending=pending,
        max_reports=INGEST_REPORTS,
        since_ms=since_ms,
    )
    th = Thresholds() if policy is None else Thresholds(clock=policy)
    return [_as_finding(a) for a in detect(history, thresholds=th, clock=False)]


def _as_finding(a: Anomaly) -> Finding:
    # Anomalies are evidence: whatever a detector's own severity, it never rejects.
    severity = "warning" if a.severity == "critical" else a.severity
    return Finding(a.code, severity, a.message, a.seq)


def _record(
    conn: Connection,
    store: VendorStore,
    core: IngestCore,
    result: ReportResult,
    findings: list[Finding],
    clones: CloneCheck,
    status: Status,
    receipt: Receipt | None,
    document: bytes,
    inst_row: InstanceRow | None,
    license_ids: list[str],
    vendor_now: datetime,
    ledger_ok: bool,
    pending: Pending,
) -> None:
    """Write the report's outcome inside the caller's transaction."""
    iid, digest = core.instance_id, core.report_digest
    head = result.head
    store.record_report_meta(
        ReportMeta(
            digest,
            iid or UNKNOWN,
            pending.created_ms * 1000,
            pending.received_ms * 1000,
            pending.report_every_days,
            pending.grace_days,
        ),
        conn,
    )
    store.record_report(
        ReportRow(
            digest,
            iid or UNKNOWN,
            result.base_seq,
            head.seq if head else -1,
            vendor_now,
            status,
            [f.to_dict() for f in findings],
        ),
        conn,
    )
    rows = [
        FindingRow(digest, iid or UNKNOWN, f.code, f.severity, f.message, f.seq) for f in findings
    ]
    rows += [
        FindingRow(digest, other, f.code, f.severity, f.message, f.seq)
        for other, f in clones.flagged
    ]
    store.insert_findings(rows, conn)
    span = _us(core.span)
    store.record_report_span(
        ReportSpan(
            digest,
            iid or UNKNOWN,
            tuple(license_ids),
            None if span is None else span[0],
            None if span is None else span[1],
            status,
        ),
        conn,
    )
    if ledger_ok and span is not None and iid:
        # Authentic activity counts for clone detection even when the report is
        # rejected for a clone: the overlap must stay visible on the next report too.
        store.upsert_activity([Activity(iid, lic, span[0], span[1]) for lic in license_ids], conn)
    if receipt is None or head is None:
        return
    store.upsert_instance(
        InstanceRow(
            instance_id=iid,
            license_id=core.default_license,
            first_seen=inst_row.first_seen if inst_row else vendor_now,
            chain_secret=result.chain.key if result.chain else None,
            chain_epoch=result.chain.epoch if result.chain else None,
            acked_seq=head.seq,
            acked_hash=head.hash.hex(),
            last_report_at=vendor_now,
            instance_public_key=result.instance_key,
        ),
        conn,
    )
    store.add_receipt(
        ReceiptRow(receipt.receipt_id, iid, digest, head.seq, vendor_now, document), conn
    )
