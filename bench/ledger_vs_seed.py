"""meterbox's sealed ledger against the seed's nested usage file, in one run.

Measures, at several history lengths n:
- the cost of one more durable write (seed: one flush; meterbox: one append that
  waits for its fsync, no batching), median of repeated writes;
- bytes on disk per recorded update;
- the vendor's cost to read back the whole history (seed: peel n layers;
  meterbox: stream-verify the report);
- meterbox group-commit throughput (many concurrent appends per fsync).
Run: .venv/bin/python bench/ledger_vs_seed.py [--sizes 100,1000,3000]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from meterbox.clock import SystemClock
from meterbox.crypto import key_id, x25519_raw_public
from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier, export_report
from seed_scheme import SeedUsageFile, decode_all

UPDATE = {"solver-runs": 3}
PAYLOAD = {
    "m": "solver-runs",
    "a": 3,
    "c": "workstation-17",
    "k": "9f86d081884c7d659a2feaa0c55ad015",
}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def run(sizes: list[int], probes: int) -> list[dict[str, float]]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vendor = X25519PrivateKey.generate()
    vid = key_id(x25519_raw_public(vendor.public_key()))
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            seed = SeedUsageFile(Path(tmp) / "usage.bin", rsa_key.public_key())
            for _ in range(n):
                seed.flush(UPDATE)
            seed_write = []
            for _ in range(probes):
                t = time.perf_counter()
                seed.flush(UPDATE)
                seed_write.append(time.perf_counter() - t)
            seed_bytes = seed.path.stat().st_size
            t = time.perf_counter()
            decoded = decode_all(rsa_key, seed.path.read_bytes())
            seed_read = time.perf_counter() - t
            assert len(decoded) == n + probes

            writer = LedgerWriter.create(
                Path(tmp) / "ledger", vendor_ledger_key=vendor.public_key(),
                vendor_key_id=vid, clock=SystemClock(),
            )  # fmt: skip
            futs = [writer.submit(RecordType.USAGE, PAYLOAD) for _ in range(n)]
            for f in futs:
                f.result()
            mb_write = []
            for _ in range(probes):
                t = time.perf_counter()
                writer.append(RecordType.USAGE, PAYLOAD)
                mb_write.append(time.perf_counter() - t)
            mb_bytes = (Path(tmp) / "ledger" / "ledger.mbl").stat().st_size
            buf = io.BytesIO()
            export_report(writer, buf, clock=SystemClock(), licenses=[], acked=None)
            writer.close()
            t = time.perf_counter()
            result = ReportVerifier({vid: vendor}).verify(io.BytesIO(buf.getvalue()))
            mb_read = time.perf_counter() - t
            assert not result.findings
        rows.append(
            {
                "n": n,
                "seed_write_ms": _median_ms(seed_write),
                "mb_write_ms": _median_ms(mb_write),
                "seed_bytes_per_update": seed_bytes / (n + probes),
                "mb_bytes_per_update": mb_bytes / (n + probes),
                "seed_read_s": seed_read,
                "mb_read_s": mb_read,
            }
        )
    return rows


def group_commit_throughput(records: int, rounds: int) -> float:
    vendor = X25519PrivateKey.generate()
    vid = key_id(x25519_raw_public(vendor.public_key()))
    rates = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            writer = LedgerWriter.create(
                Path(tmp) / "l", vendor_ledger_key=vendor.public_key(), vendor_key_id=vid,
                clock=SystemClock(),
            )  # fmt: skip
            t = time.perf_counter()
            futs = [writer.submit(RecordType.USAGE, PAYLOAD) for _ in range(records)]
            for f in futs:
                f.result()
            rates.append(records / (time.perf_counter() - t))
            writer.close()
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,3000")
    parser.add_argument("--probes", type=int, default=15)
    parser.add_argument("--throughput-records", type=int, default=100_000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(
        "| history n | seed write (ms) | meterbox write (ms) | ratio | seed B/update "
        "| meterbox B/update | seed read-back (s) | meterbox verify (s) | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in run(sizes, args.probes):
        print(
            f"| {r['n']} | {r['seed_write_ms']:.2f} | {r['mb_write_ms']:.2f} "
            f"| {r['seed_write_ms'] / r['mb_write_ms']:.1f}x "
            f"| {r['seed_bytes_per_update']:.0f} | {r['mb_bytes_per_update']:.0f} "
            f"| {r['seed_read_s']:.2f} | {r['mb_read_s']:.4f} "
            f"| {r['seed_read_s'] / r['mb_read_s']:.0f}x |"
        )
    rate = group_commit_throughput(args.throughput_records, 3)
    print(
        f"\nmeterbox group commit: median {rate:,.0f} durable records/s "
        f"({args.throughput_records:,} concurrent appends, 3 rounds)"
    )


if __name__ == "__main__":
    main()
