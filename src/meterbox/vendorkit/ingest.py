"""Report ingest: verify a server's report, store its usage once, sign a receipt.

This is the shell; the decisions are in :mod:`meterbox.vendorkit._ingest_core` (records
and documents in, rows, totals, findings and the receipt's content out). :func:`ingest`
reads the file, asks the store what the vendor acknowledged before for this instance,
streams the report through :class:`meterbox.ledger.ReportVerifier` and the core, and
writes the outcome; :class:`IngestContext` carries what one ingest works with.

Invariants:

* nothing from a rejected report is billed: every usage and seat row of one report is
  written inside one transaction that is rolled back when any finding is critical;
* the same record is never billed twice: rows are unique on (instance, seq) and
  inserted with ``ON CONFLICT DO NOTHING``, and records at or before the acknowledged
  head are not even offered; totals count only records after that head;
* one usage event is billed once across every instance of a license: a row with an
  idempotency key is billed only if no copy of ``(license, key)`` is billed yet
  (:mod:`meterbox.vendorkit._redelivery`, ``usage.redelivered`` /
  ``usage.redelivered_mismatch``); the other copies are stored unbilled;
* the same report file is never ingested twice: its SHA-256 is looked up first and a
  replay is rejected (``report.replay``) before anything else happens;
* a receipt is signed only for an accepted report, and only after the store holds
  its rows, its findings and the new acknowledged head; its bytes are staged on disk
  before the commit and take their name after it;
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
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from meterbox._fs import disk_error, is_disk_full, publish, stage_file
from meterbox.clock import SystemClock
from meterbox.compat.rules import CLIENT_PREFIX
from meterbox.errors import ConfigError
from meterbox.ledger import (
    ChainState,
    Finding,
    Head,
    Known,
    ReportHeader,
    ReportResult,
    ReportVerifier,
)
from meterbox.ledger import findings as F
from meterbox.licenses import License, Receipt
from meterbox.tpm import TpmPins
from meterbox.vendorkit._cluster import (
    MemberReport,
    max_lease_us,
    member_states,
    seat_findings,
    silent_findings,
)
from meterbox.vendorkit._db import queries
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
from meterbox.vendorkit._enforcement import (
    SEATS_EXCEEDED,
    EnforcementCheck,
    MeterKey,
    Prior,
    SlotKey,
    iso_ms,
    period_bounds_us,
)
from meterbox.vendorkit._ingest_core import (
    INGEST_ERROR,
    REPORT_REPLAY,
    UNKNOWN,
    CloneCheck,
    IngestConfig,
    IngestCore,
    IngestOutcome,
    ReceiptContent,
    Status,
    as_finding,
    cap_findings,
    check_clones,
    check_licenses,
    created_ms,
    decide,
    instance_span,
    limit_finding,
    report_findings,
    reporting_interval,
)
from meterbox.vendorkit._redelivery import Tally
from meterbox.vendorkit._redelivery import decide as decide_redelivery
from meterbox.vendorkit._tpm_check import TpmReportCheck
from meterbox.vendorkit._witness import WitnessCheck
from meterbox.vendorkit.anomaly import (
    Pending,
    ThresholdsConfig,
    detect,
    strands,
)
from meterbox.vendorkit.anomaly import instance_history as stored_history
from meterbox.vendorkit.clockcheck import ClockCheckConfig, ClockChecker
from meterbox.vendorkit.keys import VendorKeys

__all__ = ["BATCH_ROWS", "IngestConfig", "IngestContext", "IngestOutcome", "file_digest", "ingest"]

BATCH_ROWS: Final = 50_000
#: Findings that mean "this file is not something we can judge", not "this report is bad".
_UNUSABLE: Final = frozenset({F.REPORT_MALFORMED, F.REPORT_UNKNOWN_VERSION})


@dataclass(frozen=True)
class IngestContext:
    """What one ingest works with: the store and its connection, keys, the file, the clock."""

    conn: Connection
    store: VendorStore
    keys: VendorKeys
    ledger_keys: Mapping[bytes, X25519PrivateKey]
    report_path: Path
    digest: str
    vendor_now: datetime
    policy: ClockCheckConfig | None = None
    on_progress: Callable[[int], None] | None = None
    receipt_out: Path | None = None
    config: IngestConfig = field(default_factory=IngestConfig)

    @property
    def now_ms(self) -> int:
        return int(self.vendor_now.timestamp() * 1000)

    def new_receipt_id(self) -> str:
        make = self.config.receipt_id
        return make() if make is not None else "rcpt_" + secrets.token_hex(8)


def ingest(
    home: Path,
    report_path: Path,
    *,
    store_url: str | None = None,
    receipt_out: Path | None = None,
    now: datetime | None = None,
    policy: ClockCheckConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
    config: IngestConfig | None = None,
) -> IngestOutcome:
    """Verify and store one report; sign and write a receipt when it is accepted."""
    report_path = Path(report_path)
    _check_input(report_path)
    vendor_now = now or SystemClock().now()
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
            ctx = IngestContext(
                conn=conn,
                store=store,
                keys=keys,
                ledger_keys=ledger_keys,
                report_path=report_path,
                digest=digest,
                vendor_now=vendor_now,
                policy=policy,
                on_progress=on_progress,
                receipt_out=receipt_out,
                config=config or IngestConfig(),
            )
            return _ingest_new(ctx)
    except OperationalError as exc:
        if not is_disk_full(exc):
            raise
        # The transaction was rolled back with the failed write: nothing is recorded.
        raise disk_error(
            "the vendor store cannot be written; nothing of this ingest was recorded",
            exc.orig if isinstance(exc.orig, BaseException) else exc,
            hint="free disk space where the store lives and ingest the same report again",
        ) from exc


@dataclass(frozen=True, slots=True)
class _Judged:
    """The verdict on one report, ready to be written."""

    status: Status
    findings: list[Finding]
    clones: CloneCheck
    pending: Pending
    ledger_ok: bool
    receipt: Receipt | None
    document: bytes


def _ingest_new(ctx: IngestContext) -> IngestOutcome:
    """Cheapest checks first: size, header, signature and signer, then licenses, records."""
    conn, store, cfg = ctx.conn, ctx.store, ctx.config
    size = ctx.report_path.stat().st_size
    verifier = ReportVerifier(
        ctx.ledger_keys, on_progress=ctx.on_progress, max_header_len=cfg.max_header_bytes
    )
    early = _size_findings(size, cfg)
    # Closed by the ``with`` below that verifies the rest of the stream.
    stream = ctx.report_path.open("rb")
    header = None if early else verifier.read_header(stream)
    # A header that fails half-way still names what it could: take that from the result.
    raw_iid = header.instance_id if header else verifier.result.instance_id
    instance_hex = raw_iid.hex()
    inst_row = store.get_instance(instance_hex) if instance_hex else None
    known = _known(inst_row)
    verifier.known = known
    authentic = False
    if header is not None:
        # Nothing the report says is looked at further until its signer has signed it
        # all: a forged or altered file costs one hash pass and one signature check.
        with ctx.report_path.open("rb") as again:
            authentic = verifier.check_signature(again, size)
    licenses: list[License] = []
    license_findings: list[Finding] = []
    if authentic and header is not None:
        issued = [row.license_id for row in store.list_licenses()]
        licenses, license_findings = check_licenses(header.licenses, ctx.keys.bundle, issued)
    license_ids = [lic.license_id for lic in licenses]
    leases = store.open_leases(instance_hex, conn) if inst_row is not None else set()
    enforcement = EnforcementCheck(
        {lic.license_id: lic for lic in licenses}, UNKNOWN, max_leases=cfg.max_open_leases
    )
    core = IngestCore(
        instance_id=instance_hex,
        report_digest=ctx.digest,
        license_ids=frozenset(license_ids),
        default_license=license_ids[0]
        if license_ids
        else (inst_row.license_id if inst_row else UNKNOWN),
        clock=ClockChecker(vendor_now_ms=ctx.now_ms, policy=ctx.policy, open_leases=leases),
        config=cfg,
        observer=enforcement,
    )
    enforcement.default_license = core.default_license
    enforcement.start(_prior_state(ctx, instance_hex, leases))
    witnesses, tpm = _chain_checks(ctx, instance_hex, known, licenses)
    # End the read transaction the look-ups above began: from here on everything this
    # report writes is one transaction, committed only once the report is judged.
    conn.rollback()
    staged: Path | None = None
    receipt_path: Path | None = None
    result = verifier.result
    try:
        try:
            with stream:
                if authentic:
                    early += _stream(ctx, verifier, core, witnesses, tpm)
            if _unusable(result):
                conn.rollback()
                return IngestOutcome(
                    "unusable", tuple(result.findings), {}, instance_hex or None, None, ctx.digest
                )
            _flush(ctx, core)
            _resolve(ctx, core)
            _flush(ctx, core)
            if authentic and instance_hex:
                acked = inst_row.acked_seq if inst_row and inst_row.acked_seq is not None else -1
                early += _redeliveries(ctx, instance_hex, acked)
            if authentic:
                early += _record_checks(ctx, header, result, enforcement, witnesses, tpm)
            every, grace = reporting_interval(licenses)
            found = report_findings(result, early + license_findings, core, read=authentic)
            judged = _judge(
                ctx, core, result, found, licenses, known, (every, grace), tpm_challenge(tpm)
            )
        except SQLAlchemyError:
            raise  # the store, not the report: the caller sees it (disk full, locked, ...)
        except Exception as exc:  # noqa: BLE001 - a report must never crash ingest
            judged = _failed(ctx, result, early, exc)
        _settle(ctx, judged, tpm, instance_hex)
        try:
            _record(ctx, core, result, judged, inst_row, license_ids)
        except SQLAlchemyError:
            raise
        except Exception as exc:  # noqa: BLE001 - the verdict is kept, in its plainest form
            conn.rollback()
            judged = _failed(ctx, ReportResult(), early, exc)
            bare = IngestCore(instance_hex, ctx.digest, frozenset(), UNKNOWN, core.clock)
            _record(ctx, bare, ReportResult(), judged, inst_row, [])
        if judged.receipt is not None:
            receipt_path = ctx.receipt_out or ctx.report_path.with_name(
                ctx.report_path.name + ".receipt"
            )
            staged = _stage_receipt(receipt_path, judged.document)
        conn.commit()
    except BaseException:
        conn.rollback()
        if staged is not None:
            with contextlib.suppress(OSError):
                staged.unlink()
        raise
    if staged is not None and receipt_path is not None:
        _publish_receipt(staged, receipt_path)
    receipt = judged.receipt
    return IngestOutcome(
        judged.status,
        tuple(judged.findings),
        core.receipt_totals() if receipt is not None else {},
        instance_hex,
        result.head,
        ctx.digest,
        core.records,
        core.new_records,
        receipt,
        receipt_path,
    )


def _redeliveries(ctx: IngestContext, instance_id: str, after_seq: int) -> list[Finding]:
    """Bill the first copy of each keyed usage event of this report (docs/adr/0033).

    A row whose event has no other copy in the store is billed by one statement (the
    rule's trivial case, nearly every row); the others go through
    :func:`~meterbox.vendorkit._redelivery.decide` in chunks of :data:`BATCH_ROWS`
    rows, so memory stays bounded, each chunk seeing the copies billed so far.
    """
    store, conn = ctx.store, ctx.conn
    store.bill_sole_copies(instance_id, ctx.digest, after_seq, conn)
    tally = Tally()
    after = after_seq
    while True:
        rows = store.keyed_usage_of_report(instance_id, ctx.digest, after, BATCH_ROWS, conn)
        if not rows:
            break
        after = rows[-1].seq
        decision = decide_redelivery(store.billed_copies((r.event for r in rows), conn), rows)
        store.bill_rows(instance_id, [r.seq for r in decision.bill], conn)
        tally.add(decision.redelivered)
    return tally.findings()


def _settle(ctx: IngestContext, judged: _Judged, tpm: TpmReportCheck, instance_hex: str) -> None:
    """Drop every row a rejected report wrote (its verdict is kept); pin an accepted
    report's TPM."""
    if judged.status == "rejected":
        ctx.conn.rollback()
        return
    if tpm.pins_after is not None:
        ctx.store.put_tpm_pins(instance_hex, tpm.pins_after, ctx.conn)
    verdict = tpm.credential_after
    if verdict is not None and verdict.state is not None and judged.receipt is not None:
        # The state moves only with a receipt: a challenge is outstanding once a receipt
        # carries it, and an unanswered report counts once it is acknowledged.
        ctx.store.put_tpm_credential(instance_hex, verdict.state, ctx.now_ms * 1000, ctx.conn)


def _chain_checks(
    ctx: IngestContext, instance_hex: str, known: Known | None, licenses: list[License]
) -> tuple[WitnessCheck, TpmReportCheck]:
    """The checks that follow the records against what the vendor knows already."""
    pins = ctx.store.tpm_pins(instance_hex, ctx.conn) if instance_hex else TpmPins()
    roots = [x509.load_der_x509_certificate(der) for _, _, der in ctx.store.tpm_cas(ctx.conn)]
    credential = ctx.store.tpm_credential(instance_hex, ctx.conn) if instance_hex else None
    return (
        WitnessCheck(known.head if known is not None else None),
        TpmReportCheck(
            pins,
            any(x.require_tpm for x in licenses),
            ek_roots=roots,
            credential=credential,
            new_challenge=_new_challenge,
        ),
    )


#: The secret a credential challenge seals (docs/spec/tpm-attestation.md: 32 bytes).
_CREDENTIAL_SECRET_LEN = 32


def _new_challenge(ek_public: bytes, ak_name: bytes) -> tuple[bytes, bytes]:
    """A fresh secret and the credential challenge sealing it to the EK for ``ak_name``."""
    from meterbox.tpm import make_credential_challenge

    secret = secrets.token_bytes(_CREDENTIAL_SECRET_LEN)
    return secret, make_credential_challenge(ek_public, ak_name, secret)


def tpm_challenge(tpm: TpmReportCheck) -> bytes | None:
    """The challenge the receipt for this report carries (docs/adr/0036)."""
    verdict = tpm.credential_after
    return None if verdict is None else verdict.challenge


def _record_checks(
    ctx: IngestContext,
    header: ReportHeader | None,
    result: ReportResult,
    enforcement: EnforcementCheck,
    witnesses: WitnessCheck,
    tpm: TpmReportCheck,
) -> list[Finding]:
    """What the records of an authentic report say beyond their rows: enforcement
    (ADR 0016), witnessed heads (ADR 0015) and the TPM anchor (ADR 0011)."""
    if header is None:
        return []
    instance_hex = header.instance_id.hex()
    return [
        *enforcement.findings(_prior_sums(ctx, instance_hex, enforcement)),
        *witnesses.findings(),
        *tpm.finish(header.extra, result.head, header.acked, header.instance_id),
    ]


def _size_findings(size: int, cfg: IngestConfig) -> list[Finding]:
    """Report.md "Limits": the file's size (the header's is the verifier's first check)."""
    if size > cfg.max_report_bytes:
        return [limit_finding("size in bytes", cfg.max_report_bytes, size)]
    return []


def _stream(
    ctx: IngestContext,
    verifier: ReportVerifier,
    core: IngestCore,
    witnesses: WitnessCheck,
    tpm: TpmReportCheck,
) -> list[Finding]:
    """Feed every authentic record to the core (and its observers), storing rows."""
    cap = ctx.config.max_records
    for record, acked in verifier.records():
        if core.records >= cap:
            return [limit_finding("record count", cap, core.records + 1)]
        core.add(record, acked)
        witnesses.add(record, verifier.chain_hash)
        tpm.feed(record, acked)
        if len(core.usage) + len(core.seats) + len(core.events) >= BATCH_ROWS:
            _flush(ctx, core)
        if len(core.unresolved) >= BATCH_ROWS:
            _flush(ctx, core)
            _resolve(ctx, core)
    return []


def _prior_state(ctx: IngestContext, instance_id: str, leases: set[str]) -> Prior:
    """Leases live and the last receipt imported, from this instance's stored reports."""
    if not instance_id:
        return Prior()
    owners = ctx.store.lease_owners(instance_id, leases, ctx.conn) if leases else {}
    receipts = queries.instance_events(ctx.conn, instance_id, "receipt.imported", ctx.digest)
    receipt_ms = None
    for _seq, _wall, payload in receipts:
        when = iso_ms(payload.get("t"))
        if when is not None:
            receipt_ms = max(receipt_ms or when, when)
    return Prior(live={lease: (o[0], o[1]) for lease, o in owners.items()}, receipt_ms=receipt_ms)


def _prior_sums(ctx: IngestContext, instance_id: str, check: EnforcementCheck) -> Prior:
    """What earlier reports counted for the meters and data objects this report touched."""
    meters, slots = check.touched()
    used: dict[MeterKey, int] = {}
    for lic, meter, period in meters:
        used[lic, meter, period] = queries.instance_usage_net(
            ctx.conn, instance_id, license_id=lic, meter=meter, exclude_digest=ctx.digest,
            window_us=period_bounds_us(period),
        )  # fmt: skip
    topups: dict[MeterKey, int] = {}
    for _seq, wall_us, p in queries.instance_events(
        ctx.conn, instance_id, "topup.imported", ctx.digest
    ):
        key = check.meter_key(p.get("l"), str(p.get("m")), wall_us // 1000)
        amount = p.get("a")
        if key in meters and isinstance(amount, int):
            topups[key] = topups.get(key, 0) + amount
    charged: dict[SlotKey, int] = {}
    for lic, meter, obj in slots:
        charged[lic, meter, obj] = queries.instance_usage_net(
            ctx.conn, instance_id, license_id=lic, meter=meter, exclude_digest=ctx.digest,
            client_id=CLIENT_PREFIX + obj if obj else None, data_objects=None if obj else False,
        )  # fmt: skip
    return Prior(used=used, topups=topups, charged=charged)


def _failed(
    ctx: IngestContext, result: ReportResult, early: list[Finding], exc: Exception
) -> _Judged:
    """The verdict on a report ingest could not finish: rejected, with what was found."""
    findings = cap_findings(
        [
            *result.findings,
            *early,
            Finding(
                INGEST_ERROR,
                "critical",
                f"ingest stopped on this report ({type(exc).__name__}: {str(exc)[:200]}); "
                "nothing of it was billed: keep the file and report it to the toolkit's "
                "maintainers",
            ),
        ],
        ctx.config,
    )
    pending = Pending(ctx.digest, result.base_seq, -1, created_ms(result), ctx.now_ms, None, 0)
    return _Judged("rejected", findings, CloneCheck([], []), pending, False, None, b"")


def _judge(
    ctx: IngestContext,
    core: IngestCore,
    result: ReportResult,
    findings: list[Finding],
    licenses: list[License],
    known: Known | None,
    interval: tuple[int | None, int],
    challenge: bytes | None = None,
) -> _Judged:
    """Clones, clusters, anomalies, the status and the signed receipt, inside the
    transaction. ``interval``: the licenses' report interval and grace, in days;
    ``challenge``: the TPM credential challenge the receipt carries."""
    every, grace = interval
    conn, instance_hex = ctx.conn, core.instance_id
    license_ids = [lic.license_id for lic in licenses]
    activity = ctx.store.activity_for_licenses(license_ids, conn)
    span = instance_span(_us(core.span), instance_hex, activity)
    sizes = {lic.license_id: lic.cluster_size for lic in licenses}
    clones = check_clones(instance_hex, license_ids, span, activity, sizes)
    findings += clones.findings
    findings += _cluster_findings(ctx, core, result, licenses, findings)
    head = result.head
    pending = Pending(
        ctx.digest,
        result.base_seq,
        head.seq if head is not None else -1,
        created_ms(result),
        ctx.now_ms,
        every,
        grace,
    )
    if decide(findings) != "rejected" and head is not None and instance_hex:
        findings += anomaly_findings(
            conn,
            instance_hex,
            core.default_license,
            pending,
            first_wall_ms=core.first_wall,
            policy=ctx.policy,
            so_far=findings,
        )
    findings = cap_findings(findings, ctx.config)
    status = decide(findings)
    receipt: Receipt | None = None
    document = b""
    if status != "rejected" and head is not None:
        content = ReceiptContent(
            instance_id=instance_hex,
            license_ids=tuple(license_ids),
            head=head,
            previous_head_seq=None if known is None else known.head.seq,
            report_digest=ctx.digest,
            totals=core.receipt_totals(),
            status=status,
            findings=findings,
            tpm_challenge=challenge,
        )
        receipt = content.receipt(ctx.new_receipt_id(), ctx.vendor_now)
        document = receipt.sign(ctx.keys.signer())
    ledger_ok = not result.critical and head is not None
    return _Judged(status, findings, clones, pending, ledger_ok, receipt, document)


def _cluster_findings(
    ctx: IngestContext,
    core: IngestCore,
    result: ReportResult,
    licenses: list[License],
    so_far: list[Finding],
) -> list[Finding]:
    """For cluster licences (ADR 0026): members that stopped reporting, and seats
    counted across every member's stored seat rows over this report's span."""
    out: list[Finding] = []
    span = _us(core.span)
    for lic in licenses:
        if lic.cluster_size <= 1:
            continue
        out += silent_findings(
            lic,
            member_states(lic, _members(ctx, lic, core.instance_id, result), ctx.now_ms * 1000),
            core.instance_id,
        )
        if span is None or not lic.features:
            continue
        rows = queries.seat_rows(
            ctx.conn,
            start_us=span[0] - max_lease_us(lic),
            end_us=span[1] + 1,
            license_ids=[lic.license_id],
        )
        # This node's own excess is already named by the enforcement check; the
        # cluster's count adds only what no single node shows.
        named = {f.message.split(":")[0] for f in so_far if f.code == SEATS_EXCEEDED}
        out += [f for f in seat_findings(lic, rows, span) if f.message.split(":")[0] not in named]
    return out


def _members(
    ctx: IngestContext, lic: License, reporter: str, result: ReportResult
) -> list[MemberReport]:
    """The instances of a cluster licence the vendor accepted reports from, and this one
    (its last report is the one being ingested)."""
    members = {
        iid: MemberReport(iid, last, acked)
        for iid, last, acked in queries.member_reports(ctx.conn, lic.license_id)
    }
    head = result.head
    members[reporter] = MemberReport(
        reporter, created_ms(result) * 1000, None if head is None else head.seq
    )
    return list(members.values())


# ------------------------------------------------------------------ helpers
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


def _resolve(ctx: IngestContext, core: IngestCore) -> None:
    """Owners of the leases waiting in the core, from checkouts the store holds."""
    if core.unresolved:
        leases = (u.lease_id for u in core.unresolved)
        core.resolve(ctx.store.lease_owners(core.instance_id, leases, ctx.conn))


def _flush(ctx: IngestContext, core: IngestCore) -> None:
    ctx.store.insert_usage(core.take_usage(), ctx.conn)
    ctx.store.insert_seat_events(core.take_seats(), ctx.conn)
    ctx.store.insert_ledger_events(core.take_events(), ctx.conn)


def _us(span: tuple[int, int] | None) -> tuple[int, int] | None:
    return None if span is None else (span[0] * 1000, span[1] * 1000)


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


def anomaly_findings(
    conn: Connection,
    instance_id: str,
    license_id: str,
    pending: Pending,
    *,
    first_wall_ms: int | None = None,
    policy: ClockCheckConfig | None = None,
    so_far: Sequence[Finding] = (),
) -> list[Finding]:
    """The anomaly detectors over the instance's stored history, judging ``pending``.

    Runs inside the ingest transaction, after the report's rows are written. Bounded by
    the ingest window (``meterbox.vendorkit.anomaly._window``, ADR 0038) around
    ``first_wall_ms``, the report's earliest new record; usage summed per minute.
    Clock checks are left out (ingest ran them on every record); so are clone checks
    (:func:`check_clones` decides those, critically).
    ``so_far``: the findings ingest has made of this report; the clock and heartbeat
    ones are strands of combined evidence (ADR 0027 addendum).
    """
    history = stored_history(
        conn,
        instance_id,
        license_id=license_id,
        pending=pending,
        window=True,
        first_wall_ms=first_wall_ms,
    )
    th = ThresholdsConfig() if policy is None else ThresholdsConfig(clock=policy)
    evidence = strands(((f.code, f.severity, f.message, f.seq) for f in so_far), instance_id)
    found = detect(history, thresholds=th, clock=False, evidence=evidence)
    return [as_finding(a) for a in found]


def _record(
    ctx: IngestContext,
    core: IngestCore,
    result: ReportResult,
    judged: _Judged,
    inst_row: InstanceRow | None,
    license_ids: list[str],
) -> None:
    """Write the report's outcome inside the caller's transaction."""
    conn, store, vendor_now = ctx.conn, ctx.store, ctx.vendor_now
    iid, digest = core.instance_id, core.report_digest
    head, pending, findings = result.head, judged.pending, judged.findings
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
            judged.status,
            [f.to_dict() for f in findings],
        ),
        conn,
    )
    rows = [
        FindingRow(digest, iid or UNKNOWN, f.code, f.severity, f.message, f.seq) for f in findings
    ]
    rows += [
        FindingRow(digest, other, f.code, f.severity, f.message, f.seq)
        for other, f in judged.clones.flagged
    ]
    store.insert_findings(rows, conn)
    span = _us(core.span)
    # A report refused before its records were read is placed at the time its header
    # claims, so its findings show in that period's statement; it bills nothing.
    created = created_ms(result)
    shown = span or (None if not created else _us((created, created)))
    store.record_report_span(
        ReportSpan(
            digest,
            iid or UNKNOWN,
            tuple(license_ids),
            None if shown is None else shown[0],
            None if shown is None else shown[1],
            judged.status,
        ),
        conn,
    )
    if judged.ledger_ok and span is not None and iid:
        # Authentic activity counts for clone detection even when the report is
        # rejected for a clone: the overlap must stay visible on the next report too.
        store.upsert_activity([Activity(iid, lic, span[0], span[1]) for lic in license_ids], conn)
    receipt = judged.receipt
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
        ReceiptRow(receipt.receipt_id, iid, digest, head.seq, vendor_now, judged.document), conn
    )
