"""The worst case per class of hostile report: time, peak memory, rows stored.

Each class of tests/support/hostile.py (the corpus the tests run) is built on a real
site and ingested into a fresh SQLite vendor store, twice: once timed, once under
tracemalloc for the peak of Python allocations. Prints one row per class and checks
each against the stated bound (docs/spec/report.md "Limits": 2 s per MiB + 3 s).

    .venv/bin/python bench/ingest_hostile.py [--forged 7000]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The corpus lives in the tests' support package; the bench measures it as it is.
sys.path.insert(0, str(ROOT / "tests"))

from meterbox.vendorkit import DB_FILE  # noqa: E402
from meterbox.vendorkit.ingest import ingest  # noqa: E402
from support import hostile  # noqa: E402
from support.vendor_ingest import VENDOR_NOW  # noqa: E402

SECONDS_PER_MIB = 2.0
SECONDS_FLOOR = 3.0


def _rows(home: Path, digest: str) -> int:
    with sqlite3.connect(home / DB_FILE) as db:
        return sum(
            db.execute(f"SELECT count(*) FROM {t} WHERE report_digest = ?", (digest,)).fetchone()[0]
            for t in ("usage", "seat_events", "ledger_events", "findings")
        )


def _case(root: Path, name: str, forged: int) -> hostile.Case:
    w = hostile.world(root)
    if name == "forged_epochs":
        return hostile.forged_epochs(w, forged)
    return hostile.BUILDERS[name](w)


def measure(name: str, forged: int) -> tuple[str, int, float, int, int, str, bool]:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        case = _case(Path(a), name, forged)
        home = Path(a) / "vendor"
        size = case.path.stat().st_size
        start = time.perf_counter()
        out = ingest(home, case.path, now=VENDOR_NOW)
        elapsed = time.perf_counter() - start
        rows = _rows(home, out.report_digest)
        case2 = _case(Path(b), name, forged)
        tracemalloc.start()
        ingest(Path(b) / "vendor", case2.path, now=VENDOR_NOW)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    ok = out.status == case.status and case.codes <= {f.code for f in out.findings}
    within = elapsed <= SECONDS_FLOOR + SECONDS_PER_MIB * size / (1 << 20)
    return name, size, elapsed, peak, rows, out.status, ok and within


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--forged", type=int, default=7000, help="forged EPOCH records")
    args = parser.parse_args()
    print(f"{'class':<20} {'bytes':>10} {'time s':>8} {'peak MiB':>9} {'rows':>5}  status")
    failed = False
    for name in sorted(hostile.BUILDERS):
        n, size, elapsed, peak, rows, status, ok = measure(name, args.forged)
        failed |= not ok
        print(
            f"{n:<20} {size:>10,} {elapsed:>8.3f} {peak / (1 << 20):>9.1f} {rows:>5}  "
            f"{status}{'' if ok else '  OUT OF BOUND'}"
        )
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
