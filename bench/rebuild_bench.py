"""Time to rebuild the server's state from one full epoch of the ledger.

Writes one epoch of N records (default 1,000,000) through the real LedgerWriter with
a fold attached: usage on 40 (license, meter) slots with idempotency keys, seat
checkouts and releases over 500 lease ids, heartbeats. Then opens the ledger three
ways and reports the median of --rounds opens each:

1. open without a fold (the recovery scan alone: parse, chain, authenticate and
   decrypt every record of the key's epoch);
2. open with the server's fold (:class:`LedgerState`): the same scan, every record
   folded as it is read, then the new epoch's STATE record written;
3. the fold's own share (2 minus 1), per record;

and checks that the rebuilt state equals the live one. Memory: peak RSS of the
process after the fold (the fold streams; nothing is kept per record).

Run: .venv/bin/python bench/rebuild_bench.py [--records 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox.clock import SystemClock
from meterbox.crypto import key_id, x25519_raw_public
from meterbox.ledger import LedgerConfig, LedgerWriter, RecordType
from meterbox.server._core.ledgerstate import LedgerState


def _write(directory: Path, n: int, config: LedgerConfig) -> LedgerState:
    vendor = X25519PrivateKey.generate()
    clock = SystemClock()
    LedgerWriter.create(
        directory,
        vendor_ledger_key=vendor.public_key(),
        vendor_key_id=key_id(x25519_raw_public(vendor.public_key())),
        clock=clock,
        config=config,
    ).close()
    live = LedgerState()
    writer = LedgerWriter.open(directory, clock=clock, config=config, folder=live)
    expires = int(time.time()) + 86_400
    pending = []
    for i in range(n):
        if i % 20 == 0:
            rtype, payload = (
                RecordType.SEAT_CHECKOUT,
                {
                    "i": f"lease-{i % 500}",
                    "f": "cad",
                    "c": f"ws-{i % 97}",
                    "l": "lic-a",
                    "e": expires,
                },
            )
        elif i % 20 == 1:
            rtype, payload = RecordType.SEAT_RELEASE, {"i": f"lease-{(i + 250) % 500}"}
        elif i % 1000 == 2:
            rtype, payload = RecordType.HEARTBEAT, {"n": 3}
        else:
            rtype = RecordType.USAGE
            payload = {
                "m": f"meter-{i % 8}",
                "a": i % 7 + 1,
                "c": f"client-{i % 101}",
                "l": f"lic-{i % 5}",
                "k": f"{i:032x}",
            }
        pending.append(writer.submit(rtype, payload))
        if len(pending) >= 8192:
            for f in pending:
                f.result()
            pending = []
    for f in pending:
        f.result()
    writer.close()
    return live


def _open(directory: Path, config: LedgerConfig, fold: bool) -> tuple[float, LedgerState | None]:
    state = LedgerState() if fold else None
    start = time.perf_counter()
    writer = LedgerWriter.open(directory, clock=SystemClock(), config=config, folder=state)
    took = time.perf_counter() - start
    writer.close()
    return took, state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    # One epoch holds them all: the worst case a rebuild meets.
    config = LedgerConfig(epoch_max_records=args.records + 1000, epoch_max_ms=10**12)
    with tempfile.TemporaryDirectory(prefix="meterbox-rebuild-") as tmp:
        directory = Path(tmp) / "ledger"
        t0 = time.perf_counter()
        live = _write(directory, args.records, config)
        written = time.perf_counter() - t0
        size = (directory / "ledger.mbl").stat().st_size
        print(f"wrote {args.records:,} records ({size / 1e6:.0f} MB) in {written:.1f} s")
        # Each open folds the epoch before it, which the open before wrote (its own
        # epoch holds only STATE and BOOT), so open #1 is the one that folds N records.
        # Copy the directory per round so every round folds the full epoch.
        import shutil

        scans, folds = [], []
        rebuilt: LedgerState | None = None
        for _ in range(args.rounds):
            for fold, out in ((False, scans), (True, folds)):
                copy = Path(tmp) / f"copy-{fold}"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(directory, copy)
                took, state = _open(copy, config, fold)
                out.append(took)
                if state is not None:
                    rebuilt = state
        assert rebuilt is not None
        same = {k: v for k, v in rebuilt.view.usage.items() if v} == {
            k: v for k, v in live.view.usage.items() if v
        } and set(rebuilt.view.leases) == set(live.view.leases)
        scan, fold = statistics.median(scans), statistics.median(folds)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"open, recovery scan only:        {scan:6.2f} s  "
            f"({args.records / scan:,.0f} records/s)"
        )
        print(
            f"open with the fold (rebuild):    {fold:6.2f} s  "
            f"({args.records / fold:,.0f} records/s)"
        )
        print(
            f"the fold's share:                {fold - scan:6.2f} s  "
            f"({(fold - scan) / args.records * 1e6:.2f} us/record)"
        )
        print(f"rebuilt state equals live state: {same}")
        print(f"peak RSS of the process:         {rss:.0f} MB")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
