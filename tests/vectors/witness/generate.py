"""Vectors of docs/spec/witness.md: header values and the two record payloads.

Run from ``tests/`` as ``python -m vectors.witness.generate``. Fixed values only: the
instance and hash of the spec's example, a seq at each end of the range. Writes
``vectors.json``: ``valid`` values with the head they name, ``invalid`` values with
the error class they raise, and ``records``: WITNESS / WITNESS_MISMATCH payloads with
their exact msgpack bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgpack

from meterbox.ledger.records import Witness, WitnessMismatch
from meterbox.witness import WitnessHead

HERE = Path(__file__).resolve().parent
INSTANCE = "866d3e23bfcffe24a39858c1a79893bf"
HASH = bytes.fromhex("5e2bc41e4a68e7c561964a9ba49d2ee6f755455b612140fc7fd5be2017081a17")


def build() -> dict[str, bytes]:
    valid = []
    for seq in (0, 41, 2**63 - 1):
        head = WitnessHead(INSTANCE, seq, HASH)
        valid.append(
            {"value": head.to_header(), "instance": INSTANCE, "seq": seq, "hash": HASH.hex()}
        )
    good = f"1:{INSTANCE}:41:{HASH.hex()}"
    invalid = [
        ("2" + good[1:], "UnknownVersionError"),
        (good.replace(":41:", ":041:"), "FormatError"),
        (good.replace(":41:", ":+41:"), "FormatError"),
        (good.replace(":41:", f":{2**63}:"), "FormatError"),
        (good.upper(), "FormatError"),
        (good[:-1], "FormatError"),
        (good + ":", "FormatError"),
        (good + " ", "FormatError"),
        ("", "FormatError"),
        ("1:" + "0" * 200, "FormatError"),
    ]
    seen = Witness(client_id="ws-17", seq=41, head_hash=HASH)
    lost = WitnessMismatch(client_id="ws-17", seq=41, head_hash=HASH, server_seq=30, reason="ahead")
    records = [
        {
            "type": r.record_type.value,
            "kind": r.record_type.kind,
            "msgpack": msgpack.packb(r.to_map(), use_bin_type=True).hex(),
        }
        for r in (seen, lost)
    ]
    doc = {
        "valid": valid,
        "invalid": [{"value": v, "error": e} for v, e in invalid],
        "records": records,
    }
    return {"vectors.json": (json.dumps(doc, indent=2) + "\n").encode()}


def write(out: Path) -> None:
    for name, data in build().items():
        (out / name).write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
