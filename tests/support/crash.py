"""Checkers shared by the crash-image tests: what every image of a ledger must satisfy.

No tests of its own. A ledger image must open without ``--force-recover``, export a
report that verifies with no critical finding (nor a key state found behind its ledger:
an honest crash never looks like a restored ``chain.key``), and hold every record whose
acknowledgement was noted before the cut, with the same sequence number and
payload (a reused sequence number shows up as a different payload).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meterbox.clock import ManualClock
from meterbox.ledger import Head, LedgerWriter, RecordType, ReportVerifier, export_report
from meterbox.licenses import Feature, License, Meter, Receipt
from meterbox.server._instance import ServerInstance
from meterbox.vendorkit import keys as vendor_keys
from support.crashmodel import CrashPoint, HarnessReport
from support.ledger import VENDOR, VENDOR_ID


def ledger_records(
    directory: Path, acked_seq: int | None = None
) -> tuple[dict[int, Any], list[str], list[dict[str, Any]]]:
    """Open the ledger in ``directory`` as a restart would, telling it ``acked_seq``.

    Returns {seq: usage key}, the critical finding codes and the RECOVERY payloads.
    """
    clock = ManualClock(wall_ms=1_900_000_000_000, mono_ms=5_000, boot=b"\x02" * 16)
    writer = LedgerWriter.open(directory, clock=clock, replay_after=acked_seq)
    try:
        buf = io.BytesIO()
        export_report(writer, buf, clock=clock, licenses=[b"license"], acked=None)
    finally:
        writer.close()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    have: dict[int, Any] = {}
    recoveries: list[dict[str, Any]] = []
    for r, _ in verifier.records(io.BytesIO(buf.getvalue())):
        if r.type == RecordType.USAGE:
            have[r.seq] = r.payload.get("k")
        elif r.type == RecordType.RECOVERY:
            recoveries.append(dict(r.payload))
    # A crash never makes a ledger look shortened or its key state stale: LEDGER_SHORTENED
    # of any reason counts as a failure of the image (the warning one included).
    critical = [
        f.code
        for f in verifier.result.findings
        if f.severity == "critical" or f.code == "ledger.key_state_behind"
    ]
    return have, critical, recoveries


def expected_critical_removed(critical: list[str], point: CrashPoint) -> list[str]:
    """``critical`` without what the image itself should cause.

    An image without the state database's -wal (a customer deleting it, not a power
    loss) makes the server rebuild the cache from the ledger and say so, critically
    when the cache claimed less (``state.rebuilt``, ADR 0014).
    """
    if ":main-only" in point.variant:
        return [c for c in critical if c != "state.rebuilt"]
    return critical


def check_ledger(subdir: str, *, min_seq: int = -1) -> Any:
    """A checker: the ledger at ``root/subdir`` holds every noted (seq, key) past ``min_seq``."""

    def check(root: Path, point: CrashPoint) -> None:
        acks = [n for n in point.notes if isinstance(n, tuple) and n[0] == "ack"]
        acked_seq = max((n[1] for n in acks), default=None)
        have, critical, recoveries = ledger_records(root / subdir, acked_seq)
        for _, seq, key in acks:
            if seq <= min_seq:
                continue
            assert have.get(seq) == key, f"acknowledged seq {seq} ({key}) is " + (
                "missing" if seq not in have else f"now {have[seq]}"
            )
        # The restart's own RECOVERY record (if it cut anything) must say that no
        # acknowledged record was cut, and say so exactly.
        told = [r for r in recoveries if "k" in r]
        for r in told:
            assert r["a"] == 0, f"recovery record says {r['a']} acknowledged records were cut"
            assert r["s"] >= r["k"], r
        # A torn EPOCH record fails its epoch seal at the restart and is cut with what
        # followed it (ADR 0030): no image may reach the vendor as epoch.unopenable.
        critical = expected_critical_removed(critical, point)
        assert not critical, critical

    return check


@dataclass
class PathCount:
    """What the harness checked on one durable path, summed over its workloads."""

    images: int = 0
    cuts: int = 0
    failures: int = 0
    known: int = 0
    workloads: list[str] = field(default_factory=list)


#: path -> counts of every harness run in this session, for the terminal summary
#: (tests/crash/conftest.py) that CI logs show.
COUNTS: dict[str, PathCount] = {}


def report_count(path: str, report: HarnessReport, workload: str = "") -> PathCount:
    """Add one workload's image count to its path's total for the session summary.

    Returns the path's running total, so a test of the last workload can assert it.
    """
    total = COUNTS.setdefault(path, PathCount())
    total.images += report.images
    total.cuts += report.cuts
    total.failures += len(report.failures)
    total.known += len(report.known)
    if workload:
        total.workloads.append(workload)
    label = f"{path}: {workload}" if workload else path
    print(f"\ncrash images [{label}]: {report.summary()}")
    return total


# ------------------------------------------------------------------ server sites
@dataclass(frozen=True)
class Vendor:
    """A vendor home and one signed license file, outside any recorded directory."""

    home: Path
    license_files: tuple[Path, ...]

    def ledger_keys(self) -> dict[bytes, Any]:
        keys = vendor_keys.VendorKeys.load(self.home)
        return {kid: keys.ledger_private(kid) for kid in keys.pairs}

    def receipt(self, instance_id: str, head: Head, when: datetime) -> bytes:
        keys = vendor_keys.VendorKeys.load(self.home)
        return Receipt(
            receipt_id=f"rcpt_{head.seq:016x}",
            instance_id=instance_id,
            license_ids=(LICENSE_ID,),
            head_seq=head.seq,
            head_hash=head.hash.hex(),
            previous_head_seq=None,
            vendor_time=when,
            report_digest="00" * 32,
        ).sign(keys.signer())


LICENSE_ID = "lic-crash"


def make_vendor(directory: Path, licenses: int = 1) -> Vendor:
    """A vendor home and ``licenses`` signed license files (the first is LICENSE_ID)."""
    home = directory / "vendor"
    keys = vendor_keys.init(home)
    issued = datetime(2026, 1, 1, tzinfo=UTC)
    files = []
    for i in range(licenses):
        lic = License(
            license_id=LICENSE_ID if i == 0 else f"{LICENSE_ID}-{i}",
            customer="ACME Labs",
            product="Solver",
            issued=issued,
            vendor_key_id=keys.current_id.hex(),
            features={"cad": Feature(seats=3, overdraft=0, lease_seconds=60)},
            meters={"runs": Meter(limit=None)},
            expires=issued + timedelta(days=3650),
        )
        lic_file = directory / f"site-{i}.lic"
        lic_file.write_bytes(lic.sign(keys.signer()))
        files.append(lic_file)
    return Vendor(home, tuple(files))


def server_clock() -> ManualClock:
    return ManualClock(wall_ms=int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000))


def server_usage_keys(data: Path, vendor: Vendor) -> tuple[dict[int, Any], list[str], Head | None]:
    """Open the server instance in ``data``; its usage {seq: key}, critical codes, acked head."""
    instance = ServerInstance.open(data, clock=server_clock())
    try:
        report = instance.export_bytes()
        acked = instance.acked_head()
    finally:
        instance.close()
    verifier = ReportVerifier(vendor.ledger_keys())
    have = {
        r.seq: r.payload.get("k")
        for r, _ in verifier.records(io.BytesIO(report))
        if r.type == RecordType.USAGE
    }
    critical = [f.code for f in verifier.result.findings if f.severity == "critical"]
    return have, critical, acked
