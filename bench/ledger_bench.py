"""Ledger throughput and scaling, with the seed's scheme as the baseline, in one run.

Figures (targets from the ledger issue):
1. sealed appends per second in batches, one core (>= 100,000/s): the pure sealing core;
2. durable appends per second with group commit (>= 30,000/s): concurrent appends, each
   acknowledged only after its batch's fdatasync;
3. verify + decrypt records per second (>= 200,000/s), streaming a report from disk, with
   the verifier's peak traced memory at 1,000,000 records;
4. per-append time at 1,000 vs 1,000,000 records of history (ratio <= 1.5);
5. the same workload -- N updates, each durable before the next -- through the seed's
   nested RSA + AES-CBC usage file (bench/seed_scheme.py) and through meterbox, at
   1,000 and 10,000 updates (ratio >= 100x at 10,000).

Run: .venv/bin/python bench/ledger_bench.py [--records 1000000] [--seed-sizes 1000,10000]
Each figure is the median of --rounds runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

sys.path.insert(0, str(Path(__file__).parent))
from meterbox.clock import SystemClock
from meterbox.crypto import key_id, x25519_raw_public
from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier, export_report
from meterbox.ledger._seal import Sealer
from seed_scheme import SeedUsageFile

PAYLOAD = {
    "m": "solver-runs",
    "a": 3,
    "c": "workstation-17",
    "k": "9f86d081884c7d659a2feaa0c55ad015",
    "l": "lic_0123456789abcdef",
}
VENDOR = X25519PrivateKey.generate()
VID = key_id(x25519_raw_public(VENDOR.public_key()))


def median_of(rounds: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(rounds))


def new_writer(directory: Path) -> LedgerWriter:
    return LedgerWriter.create(
        directory, vendor_ledger_key=VENDOR.public_key(), vendor_key_id=VID, clock=SystemClock()
    )


def fill(writer: LedgerWriter, n: int, chunk: int = 50_000) -> None:
    done = 0
    while done < n:
        k = min(chunk, n - done)
        for f in [writer.submit(RecordType.USAGE, PAYLOAD) for _ in range(k)]:
            f.result()
        done += k


def sealed_per_second(n: int = 200_000) -> float:
    sealer = Sealer(
        instance_id=b"i" * 16, vendor_key=VENDOR.public_key(), vendor_key_id=VID,
        chain_key=os.urandom(32), epoch=0, next_seq=0, head_hash=bytes(32), random=os.urandom,
    )  # fmt: skip
    sealer.begin_epoch(boot_id=b"b" * 16, wall_ms=1, mono_ms=1, first=True)
    t = time.perf_counter()
    for i in range(n):
        sealer.seal(RecordType.USAGE, PAYLOAD, wall_ms=i, mono_ms=i)
    return n / (time.perf_counter() - t)


def durable_per_second(n: int = 100_000) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        writer = new_writer(Path(tmp) / "l")
        t = time.perf_counter()
        fill(writer, n)
        rate = n / (time.perf_counter() - t)
        writer.close()
    return rate


def verify_rate(report: Path) -> float:
    t = time.perf_counter()
    with report.open("rb") as f:
        result = ReportVerifier({VID: VENDOR}).verify(f)
    elapsed = time.perf_counter() - t
    assert not result.findings, result.findings[:3]
    return result.records / elapsed


def verify_peak_memory(report: Path) -> int:
    """Peak memory the verifier allocates (tracemalloc slows it, so timed separately)."""
    tracemalloc.start()
    with report.open("rb") as f:
        ReportVerifier({VID: VENDOR}).verify(f)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def per_append_ms(writer: LedgerWriter, probes: int = 200) -> float:
    samples = []
    for _ in range(probes):
        t = time.perf_counter()
        writer.append(RecordType.USAGE, PAYLOAD)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def workload_seed(n: int, public_key: rsa.RSAPublicKey) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        seed = SeedUsageFile(Path(tmp) / "usage.bin", public_key)
        t = time.perf_counter()
        for _ in range(n):
            seed.flush({"solver-runs": 3})
        return time.perf_counter() - t


def workload_meterbox(n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        writer = new_writer(Path(tmp) / "l")
        t = time.perf_counter()
        for _ in range(n):
            writer.append(RecordType.USAGE, PAYLOAD)
        elapsed = time.perf_counter() - t
        writer.close()
        return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seed-sizes", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    r = args.rounds

    print("| figure | median | target |")
    print("|---|---|---|")
    sealed = median_of(r, sealed_per_second)
    print(f"| sealed appends/s (batches, one core) | {sealed:,.0f} | >= 100,000 |")
    durable = median_of(r, durable_per_second)
    print(f"| durable appends/s (group commit) | {durable:,.0f} | >= 30,000 |")

    with tempfile.TemporaryDirectory() as tmp:
        writer = new_writer(Path(tmp) / "l")
        fill(writer, 1_000)
        small = per_append_ms(writer)
        fill(writer, args.records - 1_000)
        large = per_append_ms(writer)
        report = Path(tmp) / "big.mbr"
        with report.open("wb") as f:
            export_report(writer, f, clock=SystemClock(), licenses=[], acked=None)
        writer.close()
        rate = median_of(r, lambda: verify_rate(report))
        peak = verify_peak_memory(report)
        size = report.stat().st_size
    print(
        f"| verify + decrypt records/s ({args.records:,} records, {size / 1e6:.0f} MB) "
        f"| {rate:,.0f} | >= 200,000 |"
    )
    print(
        f"| verifier peak traced memory at {args.records:,} records | {peak / 1e6:.1f} MB "
        "| bounded |"
    )
    print(
        f"| per-append ms at 1,000 / {args.records:,} records of history "
        f"| {small:.3f} / {large:.3f} (ratio {large / small:.2f}) | ratio <= 1.5 |"
    )

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for n in (int(x) for x in args.seed_sizes.split(",")):
        seed_s = workload_seed(n, rsa_key.public_key())
        mb_s = median_of(r, lambda n=n: workload_meterbox(n))
        print(
            f"| {n:,} durable updates: seed scheme / meterbox (s) "
            f"| {seed_s:.2f} / {mb_s:.2f} (ratio {seed_s / mb_s:,.0f}x) | >= 100x at 10,000 |"
        )


if __name__ == "__main__":
    main()
