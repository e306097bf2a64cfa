"""The pure sealing core: turns (type, payload, times) into frames. No I/O.

Invariants kept by :class:`Sealer`:
- ``next_seq`` is one more than the seq of the last frame produced: gap-free.
- ``head`` is the chain hash over every frame produced, in order.
- records are sealed only inside an epoch; the epoch's chain key is the only
  secret held, and rolling an epoch replaces it by its one-way ratchet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meterbox.crypto import AeadKey
from meterbox.errors import FormatError, StateError
from meterbox.ledger._format import (
    SALT_LEN,
    VERSION,
    EpochPlain,
    Header,
    RecordType,
    chain,
    frame,
    nonce,
    pack_payload,
)
from meterbox.ledger._keys import ratchet, record_key, seal_chain_key


@dataclass(frozen=True, slots=True)
class Head:
    """A point in a ledger: the last record's seq and the chain hash through it."""

    seq: int
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash.hex()}


class Sealer:
    def __init__(
        self,
        *,
        instance_id: bytes,
        vendor_key: X25519PublicKey,
        vendor_key_id: bytes,
        chain_key: bytes,
        epoch: int,
        next_seq: int,
        head_hash: bytes,
        random: Callable[[int], bytes],
    ) -> None:
        self.instance_id = instance_id
        self.vendor_key = vendor_key
        self.vendor_key_id = vendor_key_id
        self.chain_key = chain_key
        self.epoch = epoch
        self.next_seq = next_seq
        self.head_hash = head_hash
        self._random = random
        # No record key until begin_epoch(): a record is only ever sealed inside an
        # epoch whose EPOCH record precedes it.
        self._record_key: AeadKey | None = None
        self.records_in_epoch = 0

    @property
    def head(self) -> Head:
        return Head(self.next_seq - 1, self.head_hash)

    def begin_epoch(self, *, boot_id: bytes, wall_ms: int, mono_ms: int, first: bool) -> bytes:
        """Produce the EPOCH frame that opens the next epoch (or epoch ``self.epoch`` if first)."""
        if not first:
            self.chain_key = ratchet(self.chain_key)
            self.epoch += 1
        salt = self._random(SALT_LEN)
        plain = EpochPlain(self.instance_id, boot_id, self.vendor_key_id, salt)
        header = Header(VERSION, RecordType.EPOCH, self.epoch, self.next_seq, wall_ms, mono_ms)
        bound = header.pack() + plain.pack()
        sealed = seal_chain_key(self.vendor_key, self.chain_key, bound)
        self._record_key = record_key(self.chain_key, salt)
        self.records_in_epoch = 0
        return self._emit(bound + sealed)

    def seal(
        self, rtype: RecordType, payload: dict[str, Any], *, wall_ms: int, mono_ms: int
    ) -> bytes:
        if self._record_key is None:
            raise StateError(
                "ledger sealer has no open epoch",
                expected="begin_epoch() before the first record",
                found="a record with no epoch",
            )
        if rtype is RecordType.EPOCH:
            raise FormatError(
                "EPOCH records are produced by begin_epoch only",
                expected="a non-epoch record type",
                found="EPOCH",
            )
        header = Header(VERSION, rtype, self.epoch, self.next_seq, wall_ms, mono_ms).pack()
        sealed = self._record_key.seal(
            nonce(self.epoch, self.next_seq), pack_payload(payload), header
        )
        self.records_in_epoch += 1
        return self._emit(header + sealed)

    def _emit(self, body: bytes) -> bytes:
        out = frame(body)
        self.head_hash = chain(self.head_hash, out)
        self.next_seq += 1
        return out
