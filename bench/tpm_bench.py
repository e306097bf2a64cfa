"""Cost of the TPM anchor on swtpm: counter advances, attestations and vendor verification.

Figures, each the median of --rounds runs of --ops operations against one swtpm process
(started here on a fresh state directory, over TCP on 127.0.0.1):

1. NV_Increment alone, per second;
2. an anchor advance (NV_Increment + NV_Read: the writer needs the new value), per second;
3. NV_Read alone, per second;
4. an attestation (NV_Certify with the ECC P-256 AK + bundle encoding), per second;
5. the vendor's verify_attestation of one bundle (pure, no TPM), per second;
6. for scale: one 4 KiB write + fdatasync in the same directory, per second -- what a
   durable ledger batch costs at least, so an advance per batch can be weighed against it.

swtpm is a process on the same machine that writes its state file on every NV change;
a hardware TPM is much slower per command (tens of milliseconds is usual for NV writes
on discrete TPMs) and may refuse bursts of NV writes (TPM_RC_NV_RATE). Treat the swtpm
figures as an upper bound.

Run: .venv/bin/python bench/tpm_bench.py [--rounds 5] [--ops 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from meterbox.tpm import TpmAnchor, TpmDevice, TpmPins, verify_attestation  # noqa: E402
from support.tpm import Swtpm  # noqa: E402

AUTH = b"bench counter auth"
HEAD = b"\xab" * 32
NONCE = b"\xcd" * 32


def rate(fn: Callable[[int], None], ops: int, rounds: int) -> tuple[float, list[float]]:
    results = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(ops):
            fn(i)
        results.append(ops / (time.perf_counter() - start))
    return statistics.median(results), results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterbox-tpm-bench-") as work:
        tpm = Swtpm(Path(work) / "state").start()
        try:
            with TpmDevice(tpm.tcti) as dev:
                anchor = TpmAnchor.initialise(dev, AUTH)
                index = int(str(anchor.identity()["nv_index"]))
                figures: dict[str, float] = {}
                figures["NV_Increment /s"], _ = rate(
                    lambda _: dev.increment(index, AUTH), args.ops, args.rounds
                )
                figures["advance (increment + read) /s"], _ = rate(
                    lambda _: anchor.advance(HEAD), args.ops, args.rounds
                )
                figures["NV_Read /s"], _ = rate(lambda _: anchor.read(), args.ops, args.rounds)
                figures["attest (NV_Certify + bundle) /s"], _ = rate(
                    lambda _: anchor.attest(HEAD, NONCE), args.ops, args.rounds
                )
                bundle = anchor.attest(HEAD, NONCE)
                counter = anchor.read()
            figures["verify_attestation /s"], _ = rate(
                lambda _: verify_attestation(
                    bundle, head=HEAD, pins=TpmPins(), required=True, ledger_counter=counter
                ),
                args.ops,
                args.rounds,
            )
            path = Path(work) / "fsync.bin"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            block = b"\x00" * 4096

            def durable_write(i: int) -> None:
                os.pwrite(fd, block, (i % 64) * 4096)
                os.fdatasync(fd)

            try:
                figures["4 KiB write + fdatasync /s"], _ = rate(
                    durable_write, args.ops, args.rounds
                )
            finally:
                os.close(fd)
        finally:
            tpm.stop()
    print(f"swtpm, median of {args.rounds} rounds x {args.ops} ops")
    print("| operation | per second | ms each |")
    print("|---|---|---|")
    for name, value in figures.items():
        print(f"| {name.removesuffix(' /s')} | {value:,.0f} | {1000 / value:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
