"""Ledger throughput and scaling, with the seed's scheme as the baseline, in one run.

Figures (targets from the ledger issue):
1. sealed appends per second in batches, one core (>= 100,000/s): the pure sealing core;
2. durable appends per second with group commit (>= 30,000/s): concurrent appends, each
   acknowledged only after its batch's fdatasync;
3. verify + decrypt records per second (>= 200,000/s), streaming a report from disk, with
   the verifier's peak traced memory at 1,000,000 records;
4. per-append time at 1,000 vs 1,000,000 records of history (ratio <= 1.5);
5. the same workload -- N updates -- through the seed's nested RSA + AES-CBC usage file
   (bench/seed_scheme.py: one flush per update) and through meterbox, at 1,000 and
   10,000 updates (ratio >= 100x at 10,000): meterbox both strictly sequentially (each
   update durable before the next is made) and with the updates submitted at once
   (group commit, each still acknowledged only once durable); plus the cost of the
   last update and the vendor's read-back of the whole history.

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
from meterbox.ledger._seal import Sealer, pending
from seed_scheme import SeedUsageFile, decode_all

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
    # As the committer seals: records encoded as they arrive, sealed a batch at a time
    # (one batch seal and one batch key step per 1,000 records).
    t = time.perf_counter()
    for start in range(0, n, 1000):
        batch = [
            pending(RecordType.USAGE, PAYLOAD, wall_ms=i, mono_ms=i)
            for i in range(start, min(n, start + 1000))
        ]
        sealer.seal_batch(batch)
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


def workload_seed(n: int, key: rsa.RSAPrivateKey) -> tuple[float, float, float]:
    """Seed scheme: total time for n flushes, the median of the last 20, and read-back."""
    with tempfile.TemporaryDirectory() as tmp:
        seed = SeedUsageFile(Path(tmp) / "usage.bin", key.public_key())
        times = []
        for _ in range(n):
            t = time.perf_counter()
            seed.flush({"solver-runs": 3})
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert len(decode_all(key, seed.path.read_bytes())) == n
        return sum(times), statistics.median(times[-20:]), time.perf_counter() - t


def workload_meterbox(n: int) -> tuple[float, float, float]:
    """meterbox: total time for n durable appends, the median of the last 20, and verify."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = new_writer(Path(tmp) / "l")
        times = []
        for _ in range(n):
            t = time.perf_counter()
            writer.append(RecordType.USAGE, PAYLOAD)
            times.append(time.perf_counter() - t)
        report = Path(tmp) / "r.mbr"
        with report.open("wb") as f:
            export_report(writer, f, clock=SystemClock(), licenses=[], acked=None)
        writer.close()
        t = time.perf_counter()
        with report.open("rb") as f:
            assert not ReportVerifier({VID: VENDOR}).verify(f).findings
        return sum(times), statistics.median(times[-20:]), time.perf_counter() - t


def workload_meterbox_concurrent(n: int) -> float:
    """meterbox: n updates submitted at once; each acknowledged once durable (group commit)."""
    with tempfile.TemporaryDirectory() as tmp:
        writer = new_writer(Path(tmp) / "l")
        t = time.perf_counter()
        fill(writer, n)
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
        seed_total, seed_last, seed_read = workload_seed(n, rsa_key)
        runs = [workload_meterbox(n) for _ in range(r)]
        mb_total = statistics.median(x[0] for x in runs)
        mb_last = statistics.median(x[1] for x in runs)
        mb_read = statistics.median(x[2] for x in runs)
        print(
            f"| {n:,} durable updates, total: seed / meterbox (s) "
            f"| {seed_total:.2f} / {mb_total:.2f} (ratio {seed_total / mb_total:,.0f}x) "
            "| >= 100x at 10,000 |"
        )
        mb_conc = median_of(r, lambda n=n: workload_meterbox_concurrent(n))
        print(
            f"| {n:,} updates submitted at once (group commit): seed / meterbox (s) "
            f"| {seed_total:.2f} / {mb_conc:.3f} (ratio {seed_total / mb_conc:,.0f}x) | |"
        )
        print(
            f"| {n:,}: cost of the last update: seed / meterbox (ms) "
            f"| {seed_last * 1e3:.2f} / {mb_last * 1e3:.3f} (ratio {seed_last / mb_last:,.0f}x) "
            "| |"
        )
        print(
            f"| {n:,}: vendor read-back of all updates: seed / meterbox (s) "
            f"| {seed_read:.2f} / {mb_read:.3f} (ratio {seed_read / mb_read:,.0f}x) | |"
        )


if __name__ == "__main__":
    main()
