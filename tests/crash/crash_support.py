"""Checkers shared by the crash-image tests: what every image of a ledger must satisfy.

No tests of its own. A ledger image must open without ``--force-recover``, export a
report that verifies with no critical finding, and hold every record whose
acknowledgement was noted before the cut, with the same sequence number and
payload (a reused sequence number shows up as a different payload).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from crashmodel import CrashPoint, HarnessReport
from ledger_support import VENDOR, VENDOR_ID
from meterbox.clock import ManualClock
from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier, export_report


def ledger_records(directory: Path) -> tuple[dict[int, Any], list[str]]:
    """Open the ledger in ``directory`` and return {seq: usage key} and critical findings."""
    clock = ManualClock(wall_ms=1_900_000_000_000, mono_ms=5_000, boot=b"\x02" * 16)
    writer = LedgerWriter.open(directory, clock=clock)
    try:
        buf = io.BytesIO()
        export_report(writer, buf, clock=clock, licenses=[b"license"], acked=None)
    finally:
        writer.close()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    have = {
        r.seq: r.payload.get("k")
        for r, _ in verifier.records(io.BytesIO(buf.getvalue()))
        if r.type == RecordType.USAGE
    }
    critical = [f.code for f in verifier.result.findings if f.severity == "critical"]
    return have, critical


def check_ledger(subdir: str, *, min_seq: int = -1) -> Any:
    """A checker: the ledger at ``root/subdir`` holds every noted (seq, key) past ``min_seq``."""

    def check(root: Path, point: CrashPoint) -> None:
        have, critical = ledger_records(root / subdir)
        assert not critical, critical
        for note in point.notes:
            if not (isinstance(note, tuple) and note[0] == "ack"):
                continue
            _, seq, key = note
            if seq <= min_seq:
                continue
            assert have.get(seq) == key, f"acknowledged seq {seq} ({key}) is " + (
                "missing" if seq not in have else f"now {have[seq]}"
            )

    return check


def report_count(name: str, report: HarnessReport) -> None:
    """Print the image count so CI logs show how much each path was exercised."""
    print(f"\ncrash images [{name}]: {report.summary()}")
