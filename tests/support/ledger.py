"""Shared builders for ledger and report tests: real files, fixed keys, a manual clock.

tests/vectors/ledger/generate.py builds its vectors from the same keys, randomness and
forger, so a change here changes the checked-in vectors (the vector test then fails).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meterbox.clock import ManualClock
from meterbox.crypto import KEY_LEN, key_id, x25519_raw_public
from meterbox.ledger import (
    Known,
    LedgerConfig,
    LedgerWriter,
    RecordType,
    ReportResult,
    ReportVerifier,
    export_report,
)
from meterbox.ledger._directory import CHAIN_KEY_FILE
from meterbox.ledger._format import (
    BATCH_SEAL_LEN,
    FLAG_CLOSES_BATCH,
    Header,
    nonce,
    pack_payload,
)
from meterbox.ledger._keystate import read as read_key_state
from meterbox.ledger._seal import Sealer

#: TEST KEYS. Published in the repository: never use them for anything real.
VENDOR = X25519PrivateKey.from_private_bytes(bytes(range(32)))
VENDOR_ID = key_id(x25519_raw_public(VENDOR.public_key()))
OTHER_VENDOR = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_VENDOR_ID = key_id(x25519_raw_public(OTHER_VENDOR.public_key()))


def counter_random(seed: int = 7) -> Callable[[int], bytes]:
    """Deterministic 'randomness' for reproducible ledgers."""
    state = {"n": seed}

    def rnd(n: int) -> bytes:
        state["n"] += 1
        out = b""
        i = 0
        while len(out) < n:
            out += (state["n"] * 1_000_003 + i).to_bytes(8, "big")
            i += 1
        return out[:n]

    return rnd


def next_epoch_forger(
    writer: LedgerWriter,
    *,
    random: Callable[[int], bytes],
    vendor: X25519PrivateKey = VENDOR,
) -> Sealer:
    """A sealer that continues ``writer``'s chain with an epoch of a forger's making.

    It uses only what a customer can see: the vendor's public key and the ledger's
    head. The chain key is the forger's choice, so the verifier must refuse the epoch.
    """
    head = writer.head
    return Sealer(
        instance_id=writer.instance_id,
        vendor_key=vendor.public_key(),
        vendor_key_id=key_id(x25519_raw_public(vendor.public_key())),
        chain_key=b"\x42" * KEY_LEN,
        epoch=writer.epoch + 1,
        next_seq=head.seq + 1,
        head_hash=head.hash,
        random=random,
    )


@dataclass
class Built:
    writer: LedgerWriter
    clock: ManualClock
    directory: Path


def make_ledger(
    directory: Path,
    *,
    config: LedgerConfig | None = None,
    vendor: X25519PrivateKey = VENDOR,
    clock: ManualClock | None = None,
    seed: int = 7,
) -> Built:
    clock = clock or ManualClock()
    writer = LedgerWriter.create(
        directory,
        vendor_ledger_key=vendor.public_key(),
        vendor_key_id=key_id(x25519_raw_public(vendor.public_key())),
        clock=clock,
        genesis={"l": ["lic_test"]},
        config=config,
        random=counter_random(seed),
    )
    return Built(writer, clock, directory)


def usage(i: int) -> dict[str, Any]:
    return {"m": "solver", "a": i % 7 + 1, "c": f"client-{i % 5}", "k": f"{i:032x}"}


def add_usage(built: Built, n: int, step_ms: int = 1000) -> None:
    for i in range(n):
        built.clock.advance(step_ms)
        built.writer.append(RecordType.USAGE, usage(i))


def export(built: Built) -> bytes:
    buf = io.BytesIO()
    export_report(built.writer, buf, clock=built.clock, licenses=[b"license"], acked=None)
    return buf.getvalue()


def verify(data: bytes, known: Known | None = None, vendor_keys: Any = None) -> ReportResult:
    keys = vendor_keys if vendor_keys is not None else {VENDOR_ID: VENDOR}
    return ReportVerifier(keys, known=known).verify(io.BytesIO(data))


def reseal_with_key_state(frame: bytes, directory: Path, payload: dict[str, Any]) -> bytes:
    """``frame`` with ``payload`` in place of its own, encrypted again as a customer could.

    Uses only what the data directory holds: the record key in ``chain.key`` (read at
    attack time). The record's header, and its batch seal when it closes a batch, are
    kept: the seal needs a batch key that the key state no longer holds.
    """
    state = read_key_state(directory, CHAIN_KEY_FILE)
    header = Header.unpack(frame[2:])
    size = header.size
    seal = frame[-BATCH_SEAL_LEN:] if header.flags & FLAG_CLOSES_BATCH else b""
    sealed = AESGCM(state.record_key).encrypt(
        nonce(header.epoch, header.seq), pack_payload(payload), frame[2 : 2 + size]
    )
    body = frame[2 : 2 + size] + sealed + seal
    return len(body).to_bytes(2, "big") + body
