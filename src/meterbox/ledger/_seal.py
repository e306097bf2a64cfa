"""The pure sealing core: turns (type, payload, times) into frames. No I/O.

Invariants kept by :class:`Sealer`:
- ``next_seq`` is one more than the seq of the last frame produced: gap-free.
- ``head`` is the chain hash over every frame produced, in order.
- records are sealed only inside an epoch, and only in whole batches
  (:meth:`Sealer.seal_batch`): every batch's last frame carries the batch seal, and
  sealing a batch moves the batch key one step forward, so the key held afterwards
  cannot seal that batch again.
- the epoch's chain key ``c_e`` is never held after its EPOCH record is produced: the
  sealer keeps ``c_{e+1}`` (for the next EPOCH record), the epoch's record key and the
  current batch key (docs/spec/ledger.md, "Keys");
- every EPOCH record ends with its epoch seal (record version 3), made from ``c_e``
  before it is dropped, so a torn EPOCH record fails the server's own recovery scan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meterbox.crypto import TAG_LEN, AeadKey
from meterbox.errors import FormatError, StateError
from meterbox.ledger._format import (
    BATCH_SEAL_LEN,
    EPOCH_SEAL_LEN,
    FLAG_CLOSES_BATCH,
    HEADER_V2,
    LEN_PREFIX,
    MAX_BODY_LEN,
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
from meterbox.ledger._keys import (
    batch_root,
    batch_seal,
    epoch_seal,
    next_batch_key,
    ratchet,
    record_key_raw,
    seal_chain_key,
)
from meterbox.ledger.records import Checkpoint


@dataclass(frozen=True, slots=True)
class Head:
    """A point in a ledger: the last record's seq and the chain hash through it."""

    seq: int
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash.hex()}


class Pending(NamedTuple):
    """A record waiting for its batch: payload already encoded, times taken.

    A tuple, not a frozen dataclass: one is built per record on the committer's path.
    """

    type: RecordType
    payload: bytes
    wall_ms: int
    mono_ms: int


def pending(rtype: RecordType, payload: dict[str, Any], *, wall_ms: int, mono_ms: int) -> Pending:
    """Encode ``payload`` now, so a bad payload fails alone, before its batch is sealed."""
    if rtype is RecordType.EPOCH:
        raise FormatError(
            "EPOCH records are produced by begin_epoch only",
            expected="a non-epoch record type",
            found="EPOCH",
        )
    if not -(2**63) <= wall_ms < 2**63 or not 0 <= mono_ms < 2**64:
        # The header holds wall time as a signed and monotonic time as an unsigned
        # 64-bit count of milliseconds (docs/spec/ledger.md); a clock outside them is
        # broken, and only this record fails.
        raise FormatError(
            "the record's time cannot be written",
            expected="wall time within a signed and monotonic time within an unsigned "
            "64-bit count of milliseconds (monotonic time never below zero)",
            found=f"wall {wall_ms} ms, monotonic {mono_ms} ms; check the host's clock",
        )
    return Pending(rtype, pack_payload(payload), wall_ms, mono_ms)


#: Bytes a record adds on disk besides its payload: length, header, tag.
FRAME_OVERHEAD = LEN_PREFIX.size + Header(VERSION, 0, 0, 0, 0, 0).size + TAG_LEN


class Sealer:
    """Seals frames. ``chain_key`` is the key the next EPOCH record will carry.

    For a new ledger that is ``c_0`` and the first :meth:`begin_epoch` is called with
    ``first=True`` (epoch ``epoch``); when resuming, it is ``c_{epoch+1}``.
    """

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
        self.next_epoch_key = chain_key
        self.epoch = epoch
        self.next_seq = next_seq
        self.head_hash = head_hash
        self._random = random
        # No keys until begin_epoch(): a record is only ever sealed inside an epoch
        # whose EPOCH record precedes it.
        self.record_key_bytes: bytes | None = None
        self._record_key: AeadKey | None = None
        self.batch = 0
        self.batch_key: bytes | None = None
        self.records_in_epoch = 0
        #: The chain hash after each frame of the last batch sealed, in order.
        self.batch_hashes: list[bytes] = []

    @property
    def head(self) -> Head:
        return Head(self.next_seq - 1, self.head_hash)

    def begin_epoch(self, *, boot_id: bytes, wall_ms: int, mono_ms: int, first: bool) -> bytes:
        """Produce the EPOCH frame that opens the next epoch (or epoch ``self.epoch`` if first)."""
        chain_key = self.next_epoch_key
        if not first:
            self.epoch += 1
        salt = self._random(SALT_LEN)
        plain = EpochPlain(self.instance_id, boot_id, self.vendor_key_id, salt)
        header = Header(VERSION, RecordType.EPOCH, self.epoch, self.next_seq, wall_ms, mono_ms)
        bound = header.pack() + plain.pack()
        sealed = seal_chain_key(self.vendor_key, chain_key, bound)
        unsealed = LEN_PREFIX.pack(len(bound) + len(sealed) + EPOCH_SEAL_LEN) + bound + sealed
        tag = epoch_seal(chain_key, salt, self.head_hash, unsealed)
        self.record_key_bytes = record_key_raw(chain_key, salt)
        self._record_key = AeadKey(self.record_key_bytes)
        self.batch, self.batch_key = 0, batch_root(chain_key, salt)
        # c_e is dropped here: only its one-way successors stay.
        self.next_epoch_key = ratchet(chain_key)
        self.records_in_epoch = 0
        return self._emit(bound + sealed + tag)

    def seal_batch(
        self,
        records: Sequence[Pending],
        *,
        checkpoint: tuple[int, int] | None = None,
    ) -> list[bytes]:
        """Seal ``records`` as one batch (then a CHECKPOINT at ``(wall, mono)`` if given).

        The last frame closes the batch with its seal; the batch key then moves on.
        """
        if self._record_key is None or self.batch_key is None:
            raise StateError(
                "ledger sealer has no open epoch",
                expected="begin_epoch() before the first record",
                found="a record with no epoch",
            )
        self.batch_hashes = []
        if not records and checkpoint is None:
            return []
        out: list[bytes] = []
        last = len(records) - 1 if checkpoint is None else -1
        for i, rec in enumerate(records):
            out.append(self._seal(rec.type, rec.payload, rec.wall_ms, rec.mono_ms, i == last))
        if checkpoint is not None:
            head = self.head
            payload = Checkpoint(seq=head.seq, head_hash=head.hash, epoch=self.epoch).to_map()
            out.append(self._seal(RecordType.CHECKPOINT, pack_payload(payload), *checkpoint, True))
        self.batch += 1
        self.batch_key = next_batch_key(self.batch_key)
        return out

    def seal(
        self, rtype: RecordType, payload: dict[str, Any], *, wall_ms: int, mono_ms: int
    ) -> bytes:
        """Seal one record as a batch of its own."""
        return self.seal_batch([pending(rtype, payload, wall_ms=wall_ms, mono_ms=mono_ms)])[0]

    def _seal(self, rtype: RecordType, payload: bytes, wall: int, mono: int, closes: bool) -> bytes:
        assert self._record_key is not None and self.batch_key is not None
        flags = FLAG_CLOSES_BATCH if closes else 0
        header = HEADER_V2.pack(
            VERSION, rtype, self.epoch, self.batch, flags, self.next_seq, wall, mono
        )
        sealed = self._record_key.seal(nonce(self.epoch, self.next_seq), payload, header)
        self.records_in_epoch += 1
        if not closes:
            out = self._emit(header + sealed)
            self.batch_hashes.append(self.head_hash)
            return out
        body_len = len(header) + len(sealed) + BATCH_SEAL_LEN
        if body_len > MAX_BODY_LEN:
            frame(bytes(body_len))  # raises the "too large" error
        unsealed = LEN_PREFIX.pack(body_len) + header + sealed
        tag = batch_seal(self.batch_key, self.head_hash, unsealed)
        out = self._emit(header + sealed + tag)
        self.batch_hashes.append(self.head_hash)
        return out

    def restore_keys(
        self,
        epoch: int,
        next_epoch_key: bytes,
        batch: int,
        batch_key: bytes | None,
        record_key_bytes: bytes | None,
    ) -> None:
        """Go back to keys saved earlier (a batch that failed to become durable)."""
        self.epoch, self.next_epoch_key, self.batch, self.batch_key = (
            epoch,
            next_epoch_key,
            batch,
            batch_key,
        )
        if record_key_bytes != self.record_key_bytes:
            self.record_key_bytes = record_key_bytes
            self._record_key = None if record_key_bytes is None else AeadKey(record_key_bytes)

    def _emit(self, body: bytes) -> bytes:
        out = frame(body)
        self.head_hash = chain(self.head_hash, out)
        self.next_seq += 1
        return out
