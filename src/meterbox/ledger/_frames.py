"""Splitting a byte stream into frames, and opening single records. Pure.

Used by the writer's crash recovery (with the server's own chain key) and by the
vendor's report verification (with chain keys opened by HPKE).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, NamedTuple

from meterbox.crypto import TAG_LEN, AeadKey
from meterbox.errors import FormatError, UnknownVersionError
from meterbox.ledger._format import (
    BATCH_SEAL_LEN,
    BY_VALUE,
    EPOCH_BODY_LENS,
    EPOCH_PLAIN,
    EPOCH_SEAL_LEN,
    FLAG_CLOSES_BATCH,
    HEADER_V1_LEN,
    HEADER_V2_LEN,
    LEN_PREFIX,
    LEN_PREFIX_LEN,
    VERSION,
    VERSION_1,
    VERSIONS,
    EpochPlain,
    Header,
    RecordType,
    nonce,
    unpack_payload,
)

_READ_CHUNK = 1 << 20
_EPOCH = int(RecordType.EPOCH)
#: The shortest body that can hold a version 2 header, a GCM tag and a batch seal.
_SEALED_MIN = HEADER_V2_LEN + TAG_LEN + BATCH_SEAL_LEN


class RawFrame(NamedTuple):
    offset: int
    data: bytes  # length prefix included
    body: bytes  # the same bytes without it


class FrameReader:
    """Yields complete frames from ``stream``, up to ``limit`` bytes.

    When the stream ends inside a frame, iteration stops and ``torn_at`` holds the
    offset of that incomplete frame; ``torn_bytes`` how many bytes it had.
    """

    def __init__(self, stream: BinaryIO, *, start_offset: int = 0, limit: int | None = None):
        self._stream = stream
        self._offset = start_offset
        self._remaining = limit
        self._buf = bytearray()
        self.torn_at: int | None = None
        self.torn_bytes = 0
        self.consumed = 0

    def _fill(self, need: int) -> bool:
        while len(self._buf) < need:
            want = _READ_CHUNK
            if self._remaining is not None:
                want = min(want, self._remaining)
                if want <= 0:
                    return False
            chunk = self._stream.read(want)
            if not chunk:
                return False
            if self._remaining is not None:
                self._remaining -= len(chunk)
            self._buf += chunk
        return True

    def __iter__(self) -> Iterator[RawFrame]:
        pos = 0
        while True:
            if len(self._buf) - pos < LEN_PREFIX_LEN:
                del self._buf[:pos]
                pos = 0
                if not self._fill(LEN_PREFIX_LEN):
                    break
            (body_len,) = LEN_PREFIX.unpack_from(self._buf, pos)
            total = LEN_PREFIX_LEN + body_len
            if len(self._buf) - pos < total:
                del self._buf[:pos]
                pos = 0
                if not self._fill(total):
                    break
            data = bytes(self._buf[pos : pos + total])
            pos += total
            yield RawFrame(self._offset, data, data[LEN_PREFIX_LEN:])
            self._offset += total
            self.consumed += total
        if self._buf:
            self.torn_at = self._offset
            self.torn_bytes = len(self._buf)


@dataclass(frozen=True, slots=True)
class Record:
    """One opened ledger record."""

    seq: int
    type: RecordType
    epoch: int
    wall_ms: int
    mono_ms: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EpochRecord:
    header: Header
    plain: EpochPlain
    #: The header and the plaintext fields: the HPKE info binds them.
    bound: bytes
    #: The HPKE output: ``enc`` and the sealed chain key.
    sealed: bytes
    #: The epoch seal (record version 3), ``b""`` in earlier versions.
    seal: bytes = b""


def parse_header(body: bytes) -> Header:
    header = Header.unpack(body)
    if header.version not in VERSIONS:
        raise UnknownVersionError(
            "unknown ledger record version",
            expected="version 1, 2 or 3",
            found=f"version {header.version}",
            hint="upgrade meterbox to read this ledger",
        )
    if header.type not in BY_VALUE:
        raise FormatError(
            "unknown ledger record type",
            expected="a type listed in docs/spec/ledger.md",
            found=f"type {header.type}",
        )
    # Flags are 0 on every version 1 record and on all but a batch's last in version 2,
    # so the common case costs one test.
    flags = header.flags
    if flags:
        if flags != FLAG_CLOSES_BATCH or header.type == _EPOCH:
            raise FormatError(
                "ledger record header has invalid flags",
                expected="flags 0, or 1 on the last record of a batch (never on EPOCH)",
                found=f"flags {flags} on a type {header.type} record",
            )
        if len(body) < _SEALED_MIN:
            raise FormatError(
                "ledger record is too short for its batch seal",
                expected=f"at least {_SEALED_MIN} bytes",
                found=f"{len(body)} bytes",
            )
    elif header.batch and header.type == _EPOCH:
        raise FormatError(
            "ledger EPOCH record names a batch",
            expected="batch 0 on an EPOCH record",
            found=f"batch {header.batch}",
        )
    return header


def parse_epoch(body: bytes, header: Header) -> EpochRecord:
    want = EPOCH_BODY_LENS[header.version]
    if len(body) != want:
        raise FormatError(
            "ledger epoch record has the wrong length",
            expected=f"{want} bytes for record version {header.version}",
            found=f"{len(body)} bytes",
        )
    size = header.size
    split = size + EPOCH_PLAIN.size
    plain = EpochPlain.unpack(body[size:split])
    if header.version == VERSION:
        end = len(body) - EPOCH_SEAL_LEN
        return EpochRecord(header, plain, body[:split], body[split:end], body[end:])
    return EpochRecord(header, plain, body[:split], body[split:])


def open_record(body: bytes, header: Header, key: AeadKey) -> Record:
    """Authenticate and decrypt a non-epoch record; raises VerificationError or FormatError.

    The batch seal of a version 2 batch's last record is not checked here (it needs the
    batch key): see :func:`unsealed_frame`.
    """
    size = HEADER_V1_LEN if header.version == VERSION_1 else HEADER_V2_LEN
    end = len(body) - BATCH_SEAL_LEN if header.flags else len(body)
    plaintext = key.open(nonce(header.epoch, header.seq), body[size:end], body[:size])
    return Record(
        header.seq,
        BY_VALUE[header.type],
        header.epoch,
        header.wall_ms,
        header.mono_ms,
        unpack_payload(plaintext),
    )


def unsealed_frame(data: bytes) -> tuple[bytes, bytes]:
    """A batch-closing frame split into the bytes its seal covers and the seal."""
    return data[:-BATCH_SEAL_LEN], data[-BATCH_SEAL_LEN:]


def unsealed_epoch_frame(data: bytes) -> bytes:
    """The bytes a version 3 EPOCH frame's epoch seal covers: all but the seal."""
    return data[:-EPOCH_SEAL_LEN]
