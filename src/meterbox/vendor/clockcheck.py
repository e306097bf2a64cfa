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
* every finding here is a ``warning``: clocks are evidence, not proof (an honest
  air-gapped site drifts), and billing counts records, not time, so a clock trick
  gains the customer no unbilled units. The vendor sees the evidence in the
  receipt, the store and the billing statement.

Stable codes (never renamed, only added):

====================================  =================================================
``clock.wall_step``                   wall clock moved against monotonic time inside a
                                      run by more than ``max_step_ms``, with no
                                      CLOCK_STEP record explaining it
``clock.step_recorded``               the server itself recorded a wall clock step
``clock.monotonic_backwards``         monotonic time went backwards inside one run
``clock.backwards_across_boot``       a run starts at a wall time before the previous
                                      run's last record
``clock.future_record``               a record is timestamped after the vendor's clock
``clock.future_report``               the report was created after the vendor's clock
``clock.report_before_records``       the report's creation time precedes its records
``heartbeat.gap``                     no record for longer than ``gap_factor`` times the
                                      heartbeat interval while seats were checked out
====================================  =================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from meterbox.ledger import Finding, Record, RecordType

CLOCK_WALL_STEP: Final = "clock.wall_step"
CLOCK_STEP_RECORDED: Final = "clock.step_recorded"
CLOCK_MONOTONIC_BACKWARDS: Final = "clock.monotonic_backwards"
CLOCK_BACKWARDS_ACROSS_BOOT: Final = "clock.backwards_across_boot"
CLOCK_FUTURE_RECORD: Final = "clock.future_record"
CLOCK_FUTURE_REPORT: Final = "clock.future_report"
CLOCK_REPORT_BEFORE_RECORDS: Final = "clock.report_before_records"
HEARTBEAT_GAP: Final = "heartbeat.gap"

MAX_PER_CODE: Final = 50

_RUN_STARTS: Final = frozenset({RecordType.GENESIS, RecordType.BOOT, RecordType.RECOVERY})


@dataclass(frozen=True, slots=True)
class ClockPolicy:
    """Thresholds of the clock checks, in milliseconds."""

    #: Wall-vs-monotonic disagreement inside one run that counts as a step. Five
    #: minutes: three times tighter than RLM's 15-minute TIMEJUMP, and still far above
    #: what NTP slewing or an honest RTC does between two records.
    max_step_ms: int = 300_000
    #: How far a record or the report may lie after the vendor's clock (site clocks
    #: without NTP drift by minutes).
    future_tolerance_ms: int = 300_000
    #: Backwards wall time across a restart tolerated as RTC/NTP noise.
    boot_backwards_tolerance_ms: int = 60_000
    #: The server writes a HEARTBEAT record this often.
    heartbeat_interval_ms: int = 60_000
    #: A silence longer than this many heartbeat intervals, with seats out, is a gap.
    gap_factor: int = 3


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


class ClockChecker:
    """Feed records in ledger order with :meth:`feed`; read :meth:`findings` at the end."""

    def __init__(
        self,
        *,
        vendor_now_ms: int,
        policy: ClockPolicy | None = None,
        open_leases: Iterable[str] = (),
    ) -> None:
        self.policy = policy or ClockPolicy()
        self._now = vendor_now_ms
        self._findings: list[Finding] = []
        self._counts: dict[str, int] = {}
        self._prev: Record | None = None
        self._run_offset = 0  # wall - mono agreed for the current run
        self._last_wall_before_run: int | None = None
        self._max_wall: int | None = None
        self._leases: set[str] = set(open_leases)

    # -------------------------------------------------------------------- output
    def _find(self, code: str, message: str, seq: int | None) -> None:
        n = self._counts.get(code, 0) + 1
        self._counts[code] = n
        if n <= MAX_PER_CODE:
            self._findings.append(Finding(code, "warning", message, seq))
        elif n == MAX_PER_CODE + 1:
            self._findings.append(
                Finding(code, "warning", f"further '{code}' findings omitted", None)
            )

    def findings(self) -> list[Finding]:
        return list(self._findings)

    @property
    def open_leases(self) -> frozenset[str]:
        return frozenset(self._leases)

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
        p = self.policy
        prev = self._prev
        self._prev = record
        report = not acked
        offset = record.wall_ms - record.mono_ms
        new_run = prev is None or record.type in _RUN_STARTS
        if report and record.wall_ms > self._now + p.future_tolerance_ms:
            self._find(
                CLOCK_FUTURE_RECORD,
                f"record {record.seq} is dated {_ms(record.wall_ms - self._now)} after the "
                "vendor's clock",
                record.seq,
            )
        if not acked:
            self._max_wall = (
                record.wall_ms if self._max_wall is None else max(self._max_wall, record.wall_ms)
            )
        if new_run:
            if (
                prev is not None
                and report
                and record.wall_ms + p.boot_backwards_tolerance_ms < prev.wall_ms
            ):
                self._find(
                    CLOCK_BACKWARDS_ACROSS_BOOT,
                    f"the server restarted at record {record.seq} with a wall clock "
                    f"{_ms(prev.wall_ms - record.wall_ms)} earlier than its last record "
                    f"({prev.seq}) before the restart",
                    record.seq,
                )
            self._run_offset = offset
        else:
            assert prev is not None
            mono_delta = record.mono_ms - prev.mono_ms
            if mono_delta < 0:
                if report:
                    self._find(
                        CLOCK_MONOTONIC_BACKWARDS,
                        f"monotonic time went back {_ms(-mono_delta)} between records "
                        f"{prev.seq} and {record.seq} of one server run: the records were "
                        "not written by one running process (snapshot restore or tampering)",
                        record.seq,
                    )
            elif report and self._leases and mono_delta > p.heartbeat_interval_ms * p.gap_factor:
                self._find(
                    HEARTBEAT_GAP,
                    f"no record for {_ms(mono_delta)} between records {prev.seq} and "
                    f"{record.seq} while {len(self._leases)} seat(s) were checked out "
                    f"(heartbeat every {_ms(p.heartbeat_interval_ms)}): the server was "
                    "paused or its records were withheld",
                    record.seq,
                )
            step = offset - self._run_offset
            if record.type == RecordType.CLOCK_STEP:
                if report:
                    delta = record.payload.get("d", step)
                    shown = delta if isinstance(delta, int) else step
                    self._find(
                        CLOCK_STEP_RECORDED,
                        f"the server recorded a wall clock step of {_ms(shown)} at record "
                        f"{record.seq}",
                        record.seq,
                    )
                self._run_offset = offset
            elif abs(step) > p.max_step_ms:
                if report:
                    self._find(
                        CLOCK_WALL_STEP,
                        f"the wall clock moved {_ms(step)} against monotonic time by record "
                        f"{record.seq} with no clock-step record (threshold "
                        f"{_ms(p.max_step_ms)})",
                        record.seq,
                    )
                self._run_offset = offset
        self._track_seats(record)

    def _track_seats(self, record: Record) -> None:
        t = record.type
        if t in (RecordType.SEAT_CHECKOUT, RecordType.SEAT_RENEW):
            lease = record.payload.get("i")
            if isinstance(lease, str):
                self._leases.add(lease)
        elif t in (RecordType.SEAT_RELEASE, RecordType.SEAT_EXPIRE):
            lease = record.payload.get("i")
            if isinstance(lease, str):
                self._leases.discard(lease)


def check_records(
    records: Iterable[tuple[Record, bool]],
    *,
    vendor_now_ms: int,
    created_ms: int | None = None,
    policy: ClockPolicy | None = None,
    open_leases: Iterable[str] = (),
) -> list[Finding]:
    """Run every check over ``(record, acked)`` pairs and return the findings."""
    checker = ClockChecker(vendor_now_ms=vendor_now_ms, policy=policy, open_leases=open_leases)
    for record, acked in records:
        checker.feed(record, acked)
    if created_ms is not None:
        checker.check_created(created_ms)
    return checker.findings()
