"""What the epoch seal of record version 3 costs (ADR 0030): per epoch, never per record.

Figures, each the median of ``--rounds`` runs of ``--n`` operations, in microseconds:
- ``begin_epoch``: the writer's whole EPOCH record (HPKE seal of the chain key, key
  derivations, and the epoch seal);
- ``epoch_seal``: the seal alone (one HKDF, one HMAC over about 220 bytes), which is
  what version 3 adds to ``begin_epoch``, to the recovery scan's check of an EPOCH
  record after the key state's point, and to the vendor's open of every epoch;
- ``hpke_open``: the vendor's HPKE open of one EPOCH record, for scale.

An epoch holds up to 65,536 records or one hour, so the seal's share per record is
the seal's time divided by the epoch's records.

Run: .venv/bin/python bench/epoch_seal_bench.py [--n 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox.crypto import random_bytes
from meterbox.ledger._format import EPOCH_SEAL_LEN, Header, RecordType
from meterbox.ledger._frames import parse_epoch
from meterbox.ledger._keys import epoch_seal, open_chain_key
from meterbox.ledger._seal import Sealer


def _sealer(vendor: X25519PrivateKey) -> Sealer:
    return Sealer(
        instance_id=bytes(16),
        vendor_key=vendor.public_key(),
        vendor_key_id=bytes(8),
        chain_key=random_bytes(32),
        epoch=0,
        next_seq=0,
        head_hash=bytes(32),
        random=random_bytes,
    )


def _per_op_us(fn: Callable[[], None], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    vendor = X25519PrivateKey.generate()
    sealer = _sealer(vendor)
    frame = sealer.begin_epoch(boot_id=bytes(16), wall_ms=1, mono_ms=1, first=True)
    body = frame[2:]
    ep = parse_epoch(body, Header.unpack(body))
    assert body[1] == RecordType.EPOCH
    chain_key = open_chain_key(vendor, ep.sealed, ep.bound)
    unsealed = frame[:-EPOCH_SEAL_LEN]

    def roll() -> None:
        sealer.begin_epoch(boot_id=bytes(16), wall_ms=1, mono_ms=1, first=False)

    def seal() -> None:
        epoch_seal(chain_key, ep.plain.salt, bytes(32), unsealed)

    def hpke() -> None:
        open_chain_key(vendor, ep.sealed, ep.bound)

    figures: dict[str, list[float]] = {"begin_epoch": [], "epoch_seal": [], "hpke_open": []}
    for _ in range(args.rounds):
        figures["begin_epoch"].append(_per_op_us(roll, args.n))
        figures["epoch_seal"].append(_per_op_us(seal, args.n))
        figures["hpke_open"].append(_per_op_us(hpke, args.n))
    print(f"| operation | median µs ({args.rounds} rounds of {args.n}) |")
    print("|---|---|")
    for name, values in figures.items():
        print(f"| `{name}` | {statistics.median(values):.1f} |")
    share = statistics.median(figures["epoch_seal"]) / statistics.median(figures["begin_epoch"])
    print(f"\nthe seal is {share:.1%} of begin_epoch")


if __name__ == "__main__":
    main()
