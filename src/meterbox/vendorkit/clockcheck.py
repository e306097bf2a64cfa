"""Clock and liveness consistency of a report's records. Pure: records in, findings out.

The ledger authenticates *what* the server wrote; this module judges *when*. Every
record carries the customer's wall clock (which the customer can set) and the
monotonic clock of the server process (which nobody can step while it runs). Within
one run of the server the two must move together; between runs the wall clock must
not go backwards; no record may claim a time after the vendor's own clock.

A *run* starts at a GENESIS, BOOT or RECOVERY record (the ledger writes RECOVERY, then
BOOT, each time it is opened) and, for a report that starts after a compaction, at
its first record. Monotonic time may restart between runs (a reboot), never inside one.

Invariants:

* :class:`ClockChecker` is fed records one at a time in ledger order and keeps O(1)
  state plus the set of open seat leases, so a report of any length checks in
  bounded memory;
* findings are only raised for records the vendor has not acknowledged before
  (``acked=False``): an earlier receipt already judged the rest;
* at most :data:`MAX_PER_CODE` findings per code, then one summary finding;
* every finding is a ``warning`` except ``clock.drift`` (``info``): clocks are
  evidence, not proof (an honest air-gapped site drifts), and billing counts records,
  not time, so a clock trick gains the customer no unbilled units. The vendor sees
  the evidence in the receipt, the store and the billing statement.

Stable codes (never renamed, only added):

====================================  =================================================
``clock.wall_step``                   wall clock moved against monotonic time inside a
                                      run by more than ``max_step_ms``, with no
                                      CLOCK_STEP record explaining it
``clock.step_recorded``               the server itself recorded a wall clock step
``clock.drift``                       a recorded or unrecorded step that built up from
                                      moves of at most ``slew_ms`` between records
                                      (NTP correcting a fast or slow clock): info
``clock.monotonic_backwards``         monotonic time went backwards inside one run
``clock.backwards_across_boot``       a run starts at a wall time before the previous
                                      run's last record
``clock.future_record``               a record is timestamped after the vendor's clock
``clock.future_report``               the report was created after the vendor's clock
``clock.report_before_records``       the report's creation time precedes its records
``clock.before_receipt``              a record is dated before the vendor time of a
                                      receipt the server had already imported
``heartbeat.gap``                     no record for longer than ``gap_factor`` times the
                                      heartbeat interval while seats were checked out
``heartbeat.unclean_restart``         the server restarted without a SHUTDOWN record,
                                      after a silence longer than a heartbeat gap, while
                                      seats were checked out (a crash, or a restored
                                      snapshot)
====================================  =================================================

This is the only implementation of these checks. Ingest feeds it every record of a
report as it streams (:meth:`ClockChecker.feed`); the anomaly detectors
(:mod:`meterbox.vendorkit.anomaly`) feed it the stored history of an instance through
:meth:`ClockChecker.observe`, so ``meterbox vendor anomalies`` reports the same codes
for the same evidence. A record whose monotonic time is unknown (``mono_ms < 0``: the
vendor store keeps monotonic times for heartbeats, boots and the like, not for usage)
still counts for seats, receipts and the vendor clock, but not for the run's clocks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from meterbox.errors import FormatError
from meterbox.ledger import Finding, Record, RecordType
from meterbox.ledger.records import (
    ClockStep,
    Heartbeat,
    ReceiptImported,
    SeatCheckout,
    SeatRelease,
    SeatRenew,
    parse_payload,
)

CLOCK_WALL_STEP: Final = "clock.wall_step"
CLOCK_DRIFT: Final = "clock.drift"
CLOCK_STEP_RECORDED: Final = "clock.step_recorded"
CLOCK_MONOTONIC_BACKWARDS: Final = "clock.monotonic_backwards"
CLOCK_BACKWARDS_ACROSS_BOOT: Final = "clock.backwards_across_boot"
CLOCK_FUTURE_RECORD: Final = "clock.future_record"
CLOCK_FUTURE_REPORT: Final = "clock.future_report"
CLOCK_REPORT_BEFORE_RECORDS: Final = "clock.report_before_records"
CLOCK_BEFORE_RECEIPT: Final = "clock.before_receipt"
HEARTBEAT_GAP: Final = "heartbeat.gap"
HEARTBEAT_UNCLEAN_RESTART: Final = "heartbeat.unclean_restart"

#: Every code of this module and the one-line meaning shown beside it.
CODES: Final[dict[str, str]] = {
    CLOCK_WALL_STEP: "wall time and monotonic time drifted apart without a step record",
    CLOCK_DRIFT: "wall time drifted from monotonic time in small corrections (NTP), not a jump",
    CLOCK_STEP_RECORDED: "the server recorded a step of its wall clock",
    CLOCK_MONOTONIC_BACKWARDS: "monotonic time went backwards without a restart",
    CLOCK_BACKWARDS_ACROSS_BOOT: "after a restart the wall clock was behind the last time seen",
    CLOCK_FUTURE_RECORD: "records are dated after the vendor's clock",
    CLOCK_FUTURE_REPORT: "the report was created after the vendor's clock",
    CLOCK_REPORT_BEFORE_RECORDS: "the report was created before its own latest record",
    CLOCK_BEFORE_RECEIPT: "records are older than a receipt the server had already imported",
    HEARTBEAT_GAP: "the running server wrote nothing for longer than its heartbeat allows",
    HEARTBEAT_UNCLEAN_RESTART: (
        "the server stopped without a shutdown record while seats were in use"
    ),
}

MAX_PER_CODE: Final = 50

_RUN_STARTS: Final = frozenset({RecordType.GENESIS, RecordType.BOOT, RecordType.RECOVERY})
_LEASE_OPEN: Final = frozenset(
    {RecordType.SEAT_CHECKOUT, RecordType.SEAT_RENEW, RecordType.SEAT_BORROWED}
)
_LEASE_CLOSE: Final = frozenset(
    {
        RecordType.SEAT_RELEASE,
        RecordType.SEAT_EXPIRE,
        RecordType.SEAT_REMOVED,
        RecordType.SEAT_RETURNED,
    }
)
#: Types whose payload :meth:`ClockChecker.feed` reads.
_READ_TYPES: Final = (
    _LEASE_OPEN | _LEASE_CLOSE | {RecordType.HEARTBEAT, RecordType.RECEIPT_IMPORTED}
)


def clock_step_ms(payload: Mapping[str, Any]) -> int | None:
    """The step of a CLOCK_STEP record in ms, whichever writer made it, or ``None``.

    The ledger writer records ``{"d": ms, "w", "m"}``; the server's license clock records
    ``{"b", "a", "d": seconds}``. Both say how far wall time moved beyond monotonic time.
    """
    if "b" not in payload and "a" not in payload:
        try:
            return ClockStep.from_map(payload).delta_ms
        except FormatError:
            pass  # a non-integral step: judged below like the license clock's seconds
    d = payload.get("d")
    if not isinstance(d, int | float) or isinstance(d, bool) or not math.isfinite(d):
        return None
    if "b" in payload or "a" in payload:
        return round(d * 1000)
    return int(d)


def receipt_vendor_ms(payload: Mapping[str, Any]) -> int:
    """Vendor time (ms) of a RECEIPT_IMPORTED record's receipt, or 0 when not stated."""
    value = payload.get("t")
    if not isinstance(value, str):
        return 0
    try:
        return round(datetime.fromisoformat(value).timestamp() * 1000)
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class ClockCheckConfig:
    """ThresholdsConfig of the clock checks, in milliseconds."""

    #: Wall-vs-monotonic disagreement inside one run that counts as a step. Five
    #: minutes: three times tighter than RLM's 15-minute TIMEJUMP, and still far above
    #: what NTP slewing or an honest RTC does between two records.
    max_step_ms: int = 300_000
    #: The largest single move of wall against monotonic time between two records
    #: that still counts as a slew or an NTP-sized correction: a step whose every move
    #: is this small is drift (``clock.drift``, info), not a jump.
    slew_ms: int = 180_000
    #: The fastest drift, in parts per million of elapsed monotonic time, that counts
    #: as a clock's own error (1000 ppm: 86 seconds a day; RTCs are within 100).
    max_drift_ppm: int = 1000
    #: How far a record or the report may lie after the vendor's clock (site clocks
    #: without NTP drift by minutes).
    future_tolerance_ms: int = 300_000
    #: Backwards wall time across a restart tolerated as RTC/NTP noise.
    boot_backwards_tolerance_ms: int = 60_000
    #: The server writes a HEARTBEAT record this often.
    heartbeat_interval_ms: int = 60_000
    #: A silence longer than this many heartbeat intervals, with seats out, is a gap.
    gap_factor: int = 3
    #: How far records may lie before the vendor time of a receipt already imported.
    receipt_tolerance_ms: int = 600_000

    @property
    def gap_ms(self) -> int:
        return self.heartbeat_interval_ms * self.gap_factor


def _ms(value: int) -> str:
    """Milliseconds as a short human duration (``4m 10s``)."""
    sign = "-" if value < 0 else ""
    s = abs(value) // 1000
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    parts = [f"{d}d"] if d else []
    if h:
        parts.append(f"{h}h")
    if m:
        parts.append(f"{m}m")
    if s or not parts:
        parts.append(f"{s}s")
    return sign + " ".join(parts)


@dataclass(frozen=True, slots=True)
class RecordDetails:
    """What the checks read of a record beyond its type and clocks; all optional."""

    #: The lease a seat record opens or closes.
    lease: str | None = None
    #: Seats in use, from a heartbeat.
    in_use: int | None = None
    #: The step of a CLOCK_STEP record, in ms.
    step_ms: int | None = None
    #: The vendor time of an imported receipt, in ms (0: not a receipt).
    receipt_ms: int = 0


@dataclass(frozen=True, slots=True)
class _Seen:
    """The last record with a known monotonic time: what the next one is compared with."""

    seq: int
    rtype: RecordType
    wall_ms: int
    mono_ms: int


class ClockChecker:
    """Feed records in ledger order with :meth:`feed`; read :meth:`findings` at the end."""

    def __init__(
        self,
        *,
        vendor_now_ms: int,
        policy: ClockCheckConfig | None = None,
        open_leases: Iterable[str] = (),
    ) -> None:
        self.policy = policy or ClockCheckConfig()
        self._now = vendor_now_ms
        self._findings: list[Finding] = []
        self._counts: dict[str, int] = {}
        self._prev: _Seen | None = None
        self._run_offset = 0  # wall - mono agreed for the current run
        self._largest_move = 0  # largest move between two records since it was agreed
        self._agreed_mono = 0  # monotonic time when it was agreed
        self._max_wall: int | None = None
        self._leases: set[str] = set(open_leases)
        self._in_use = 0  # seats in use as the last heartbeat stated them
        self._receipt_floor = 0  # vendor time of the latest receipt imported
        self._before_receipt_seen = False

    # -------------------------------------------------------------------- output
    def _find(
        self,
        code: str,
        message: str,
        seq: int | None,
        *,
        severity: Literal["warning", "info"] = "warning",
    ) -> None:
        n = self._counts.get(code, 0) + 1
        self._counts[code] = n
        if n <= MAX_PER_CODE:
            self._findings.append(Finding(code, severity, message, seq))
        elif n == MAX_PER_CODE + 1:
            self._findings.append(
                Finding(code, severity, f"further '{code}' findings omitted", None)
            )

    def findings(self) -> list[Finding]:
        return list(self._findings)

    @property
    def open_leases(self) -> frozenset[str]:
        return frozenset(self._leases)

    @property
    def seats_out(self) -> int:
        return max(len(self._leases), self._in_use)

    # --------------------------------------------------------------------- input
    def check_created(self, created_ms: int) -> None:
        """Judge the report's own creation time (call after the last :meth:`feed`)."""
        tol = self.policy.future_tolerance_ms
        if created_ms > self._now + tol:
            self._find(
                CLOCK_FUTURE_REPORT,
                f"the report was created {_ms(created_ms - self._now)} after the vendor's "
                "clock: the site clock is ahead",
                None,
            )
        if self._max_wall is not None and created_ms + tol < self._max_wall:
            self._find(
                CLOCK_REPORT_BEFORE_RECORDS,
                f"the report was created {_ms(self._max_wall - created_ms)} before its "
                "latest record: the site clock was set back before export",
                None,
            )

    def feed(self, record: Record, acked: bool = False) -> None:
        """One verified ledger record, in ledger order."""
        t = record.type
        lease: str | None = None
        in_use: int | None = None
        step_ms: int | None = None
        receipt_ms = 0
        if t in _READ_TYPES:
            try:
                payload = parse_payload(t, record.payload)
            except FormatError:
                payload = None  # an ill-formed payload is evidence of nothing here
            if isinstance(payload, SeatCheckout | SeatRenew | SeatRelease):
                lease = payload.lease_id
            elif isinstance(payload, Heartbeat):
                in_use = payload.seats_in_use
            elif isinstance(payload, ReceiptImported):
                receipt_ms = payload.vendor_ms or 0
        if t is RecordType.CLOCK_STEP:
            # Either writer's shape: see clock_step_ms.
            step_ms = clock_step_ms(record.payload)
        self.observe(
            record.seq,
            t,
            record.wall_ms,
            record.mono_ms,
            acked=acked,
            details=RecordDetails(
                lease=lease, in_use=in_use, step_ms=step_ms, receipt_ms=receipt_ms
            ),
        )

    def observe(
        self,
        seq: int,
        rtype: RecordType,
        wall_ms: int,
        mono_ms: int,
        *,
        acked: bool = False,
        details: RecordDetails = RecordDetails(),
    ) -> None:
        """One record reduced to what the checks read (``mono_ms < 0``: not known)."""
        if rtype is RecordType.STATE:
            # Bookkeeping the ledger writes with its EPOCH record, at the epoch's time:
            # at an open it precedes the BOOT that starts the run, so it is no event.
            return
        lease, in_use, step_ms, receipt_ms = (
            details.lease,
            details.in_use,
            details.step_ms,
            details.receipt_ms,
        )
        p = self.policy
        report = not acked
        if report and wall_ms > self._now + p.future_tolerance_ms:
            self._find(
                CLOCK_FUTURE_RECORD,
                f"record {seq} is dated {_ms(wall_ms - self._now)} after the vendor's clock",
                seq,
            )
        if report:
            self._max_wall = wall_ms if self._max_wall is None else max(self._max_wall, wall_ms)
            self._check_receipt_floor(seq, wall_ms, receipt_ms)
        if receipt_ms > 0:
            self._receipt_floor = max(self._receipt_floor, receipt_ms)
        if mono_ms >= 0:
            self._check_run(seq, rtype, wall_ms, mono_ms, report, step_ms)
        self._track_seats(rtype, lease, in_use)

    def _check_receipt_floor(self, seq: int, wall_ms: int, receipt_ms: int) -> None:
        # A receipt carries the vendor's clock into the site's ledger: records written
        # after its import cannot honestly be dated before it. Once per report: one
        # clock set back dates every later record before the receipt.
        floor = max(self._receipt_floor, receipt_ms)
        tol = self.policy.receipt_tolerance_ms
        if self._before_receipt_seen or not floor or wall_ms >= floor - tol:
            return
        self._before_receipt_seen = True
        self._find(
            CLOCK_BEFORE_RECEIPT,
            f"record {seq} is dated {_ms(floor - wall_ms)} before the vendor time of a "
            "receipt the server had already imported: the site clock was set back",
            seq,
        )

    def _check_run(
        self,
        seq: int,
        rtype: RecordType,
        wall_ms: int,
        mono_ms: int,
        report: bool,
        step_ms: int | None,
    ) -> None:
        p = self.policy
        prev = self._prev
        self._prev = _Seen(seq, rtype, wall_ms, mono_ms)
        offset = wall_ms - mono_ms
        if prev is None or rtype in _RUN_STARTS:
            if prev is not None and report:
                self._check_restart(seq, wall_ms, prev)
            self._run_offset = offset
            self._largest_move, self._agreed_mono = 0, mono_ms
            return
        mono_delta = mono_ms - prev.mono_ms
        if mono_delta < 0:
            if report:
                self._find(
                    CLOCK_MONOTONIC_BACKWARDS,
                    f"monotonic time went back {_ms(-mono_delta)} between records "
                    f"{prev.seq} and {seq} of one server run: the records were "
                    "not written by one running process (snapshot restore or tampering)",
                    seq,
                )
        elif report and self.seats_out and mono_delta > p.gap_ms:
            self._find(
                HEARTBEAT_GAP,
                f"no record for {_ms(mono_delta)} between records {prev.seq} and "
                f"{seq} while {self.seats_out} seat(s) were checked out "
                f"(heartbeat every {_ms(p.heartbeat_interval_ms)}): the server was "
                "paused or its records were withheld",
                seq,
            )
        step = offset - self._run_offset
        # The largest single move of wall against monotonic time between two records
        # since the offset was last agreed: a jump is one big move, drift is many small.
        move = offset - (prev.wall_ms - prev.mono_ms)
        self._largest_move = max(self._largest_move, abs(move))
        if rtype == RecordType.CLOCK_STEP:
            if report:
                shown = step_ms if step_ms is not None else step
                self._report_step(seq, shown, mono_ms, recorded=True)
            self._run_offset = offset
            self._largest_move, self._agreed_mono = 0, mono_ms
        elif abs(step) > p.max_step_ms:
            if report:
                self._report_step(seq, step, mono_ms, recorded=False)
            self._run_offset = offset
            self._largest_move, self._agreed_mono = 0, mono_ms

    def _report_step(self, seq: int, step: int, mono_ms: int, *, recorded: bool) -> None:
        p = self.policy
        way = "back" if step < 0 else "forward"
        # Drift: every move small, and slow over the time it built up in (a clock off
        # by a millisecond a second is far off already; a creep faster is deliberate).
        elapsed = max(1, mono_ms - self._agreed_mono)
        slow = abs(step) * 1_000_000 <= p.max_drift_ppm * elapsed
        if self._largest_move <= p.slew_ms and slow:
            self._find(
                CLOCK_DRIFT,
                f"wall time drifted {way} by {_ms(abs(step))} against monotonic time by "
                f"record {seq}, in moves of at most {_ms(self._largest_move)} between "
                "records: corrections of a fast or slow clock (NTP), not one jump",
                seq,
                severity="info",
            )
        elif recorded:
            self._find(
                CLOCK_STEP_RECORDED,
                f"the server recorded a wall clock step {way} by {_ms(abs(step))} at record {seq}",
                seq,
            )
        else:
            self._find(
                CLOCK_WALL_STEP,
                f"the wall clock moved {_ms(step)} against monotonic time by record "
                f"{seq} with no clock-step record (threshold {_ms(p.max_step_ms)})",
                seq,
            )

    def _check_restart(self, seq: int, wall_ms: int, prev: _Seen) -> None:
        p = self.policy
        if wall_ms + p.boot_backwards_tolerance_ms < prev.wall_ms:
            self._find(
                CLOCK_BACKWARDS_ACROSS_BOOT,
                f"the server restarted at record {seq} with a wall clock "
                f"{_ms(prev.wall_ms - wall_ms)} earlier than its last record "
                f"({prev.seq}) before the restart",
                seq,
            )
        down = wall_ms - prev.wall_ms
        if prev.rtype is not RecordType.SHUTDOWN and self.seats_out and down > p.gap_ms:
            self._find(
                HEARTBEAT_UNCLEAN_RESTART,
                f"the server stopped without a shutdown record after record {prev.seq} and "
                f"restarted {_ms(down)} later (record {seq}) while {self.seats_out} "
                "seat(s) were checked out: a crash, or a restored snapshot",
                seq,
            )
            # The restart itself releases nothing in the ledger; what the server restores
            # it records again, so count seats afresh from here.
            self._in_use = 0

    def _track_seats(self, rtype: RecordType, lease: str | None, in_use: int | None) -> None:
        if rtype in _LEASE_OPEN and lease is not None:
            self._leases.add(lease)
        elif rtype in _LEASE_CLOSE and lease is not None:
            self._leases.discard(lease)
        elif rtype is RecordType.HEARTBEAT and in_use is not None:
            self._in_use = max(0, in_use)
        elif rtype in _RUN_STARTS:
            self._in_use = 0


def check_records(
    records: Iterable[tuple[Record, bool]],
    *,
    vendor_now_ms: int,
    created_ms: int | None = None,
    policy: ClockCheckConfig | None = None,
    open_leases: Iterable[str] = (),
) -> list[Finding]:
    """Run every check over ``(record, acked)`` pairs and return the findings."""
    checker = ClockChecker(vendor_now_ms=vendor_now_ms, policy=policy, open_leases=open_leases)
    for record, acked in records:
        checker.feed(record, acked)
    if created_ms is not None:
        checker.check_created(created_ms)
    return checker.findings()
