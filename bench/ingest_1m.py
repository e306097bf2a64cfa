"""Time `ingest` of a 1,000,000-record report into a fresh SQLite or PostgreSQL store.

Builds one ledger (group commit: many futures submitted at once, manual clock),
exports it once, then ingests it N times, each into a new vendor store, and prints
the median time and records per second. ``--store postgres`` ingests into a new
database on a throw-away PostgreSQL server (the one the tests start,
tests/support/postgres.py); ``--store pair`` runs SQLite and PostgreSQL alternately on
the same report, so both see the same machine load, and prints the ratio of medians.

    .venv/bin/python bench/ingest_1m.py [--records 1000000] [--runs 3] [--store pair]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from meterbox.clock import ManualClock
from meterbox.ledger import LedgerConfig, LedgerWriter, RecordType, export_report
from meterbox.licenses import License, Meter
from meterbox.vendorkit import DB_FILE, VendorStore
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.ingest import ingest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.postgres import PostgresServer  # noqa: E402

SUBMIT_CHUNK = 50_000


def build(root: Path, records: int) -> tuple[Path, Path, bytes]:
    home = root / "vendor"
    pair = vendor_keys.VendorKeyPair.from_raw(
        bytes(range(32)), bytes(range(32, 64)), datetime(2025, 1, 1, tzinfo=UTC)
    )
    keys = vendor_keys.init(home, pair=pair)
    lic = License(
        license_id="lic_bench",
        customer="Bench",
        product="Solver",
        issued=datetime(2025, 12, 1, tzinfo=UTC),
        vendor_key_id=pair.key_id.hex(),
        meters={"solver": Meter(None, "total")},
    )
    document = lic.sign(keys.signer())
    clock = ManualClock(wall_ms=int(datetime(2026, 1, 5, tzinfo=UTC).timestamp() * 1000))
    writer = LedgerWriter.create(
        root / "ledger",
        vendor_ledger_key=pair.ledger_private.public_key(),
        vendor_key_id=pair.key_id,
        clock=clock,
        genesis={"l": ["lic_bench"]},
        config=LedgerConfig(max_batch_records=SUBMIT_CHUNK),
    )
    done = 0
    while done < records:
        n = min(SUBMIT_CHUNK, records - done)
        futures = [
            writer.submit(
                RecordType.USAGE,
                {
                    "m": "solver",
                    "a": 1 + i % 7,
                    "c": f"c{i % 16}",
                    "l": "lic_bench",
                    "k": f"{done + i:016x}",
                },
            )
            for i in range(n)
        ]
        for f in futures:
            f.result()
        clock.advance(1000)
        done += n
    report = root / "report.mbr"
    with report.open("wb") as out:
        export_report(writer, out, clock=clock, licenses=[document], acked=None)
    writer.close()
    return home, report, document


def fresh_store(root: Path, home: Path, document: bytes, pg_url: str | None) -> str | None:
    """An empty vendor store holding the license: SQLite in ``home``, or a new PG database."""
    url: str | None = None
    if pg_url is None:
        for extra in ("", "-wal", "-shm"):
            (home / (DB_FILE + extra)).unlink(missing_ok=True)
    else:
        base, _, _ = pg_url.rpartition("/")
        name = "bench_" + uuid.uuid4().hex[:12]
        admin = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # generated name, never input
        url = f"{base}/{name}"
    with VendorStore.open(url, home=home) as db:
        lic = License.from_bytes(document, vendor_keys.VendorKeys.load(home).bundle)
        db.add_license(lic, document)
    shutil.rmtree(root / "receipts", ignore_errors=True)
    return url


def timed_ingest(home: Path, report: Path, url: str | None, label: str) -> float:
    t = time.perf_counter()
    outcome = ingest(home, report, store_url=url, now=datetime(2026, 1, 20, tzinfo=UTC))
    elapsed = time.perf_counter() - t
    assert outcome.accepted, outcome.findings
    print(
        f"{label}: {elapsed:.2f} s, {outcome.new_records:,} records, "
        f"status {outcome.status}, totals {dict(outcome.totals)}",
        flush=True,
    )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--store", choices=("sqlite", "postgres", "pair"), default="sqlite")
    args = parser.parse_args()
    stores = ["sqlite", "postgres"] if args.store == "pair" else [args.store]
    server = PostgresServer() if "postgres" in stores else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pg_url = None if server is None else server.start()
        try:
            t0 = time.perf_counter()
            home, report, document = build(root, args.records)
            print(
                f"built and exported {args.records:,} records in "
                f"{time.perf_counter() - t0:.1f} s ({report.stat().st_size / 1e6:.0f} MB)",
                flush=True,
            )
            times: dict[str, list[float]] = {name: [] for name in stores}
            for run in range(args.runs):
                for name in stores:
                    url = fresh_store(root, home, document, pg_url if name == "postgres" else None)
                    times[name].append(timed_ingest(home, report, url, f"run {run + 1} {name}"))
        finally:
            if server is not None:
                server.stop()
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(
            f"{name}: median of {args.runs}: {median:.2f} s for {args.records:,} records "
            f"= {args.records / median:,.0f} records/s"
        )
    if len(medians) == 2:
        print(f"postgres / sqlite: {medians['postgres'] / medians['sqlite']:.2f}")


if __name__ == "__main__":
    main()
