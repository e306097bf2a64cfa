"""Byte layout of ledger records (docs/spec/ledger.md, record versions 1 to 3). Pure.

A record on disk is a *frame*: a big-endian ``u16`` body length, then the body::

    v1: u8 version (1) | u8 type | u32 epoch | u64 seq | i64 wall_ms | u64 mono_ms | sealed
    v2, v3: u8 version | u8 type | u32 epoch | u32 batch | u8 flags | u64 seq
        | i64 wall_ms | u64 mono_ms | sealed [| u8[16] batch seal when flags bit 0]

Version 2 numbers the group-commit batches of an epoch, and the last record of each
batch carries a seal (HMAC) under that batch's ratcheting key: see ``_keys``. Version 3
is version 2 with an epoch seal (HMAC) at the end of every EPOCH record, so the server
can authenticate an EPOCH record at recovery (ADR 0030). The writer produces version 3
only; readers accept all three. The body header (30 bytes in v1, 35 in v2 and v3) is
authenticated: AEAD associated data, or HPKE info for epoch records. ``sealed`` is
AES-256-GCM of the msgpack payload for every record type except EPOCH, whose ``sealed``
carries the epoch's plaintext parameters and the HPKE-sealed chain key (then, in v3,
the epoch seal). The chain hash ``h_i = SHA-256(h_{i-1} || frame_i)`` is never
stored per record; it is recomputed, and checkpoints, reports and receipts commit to it.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import msgpack

from meterbox.crypto import HASH_LEN, KEY_ID_LEN, TAG_LEN, sha256
from meterbox.errors import FormatError, UnknownVersionError

#: The record version this writer produces.
VERSION: Final = 3
VERSION_1: Final = 1
VERSION_2: Final = 2
#: Record versions a reader accepts.
VERSIONS: Final = frozenset({VERSION_1, VERSION_2, VERSION})
#: Record versions whose epochs are sealed in numbered batches (the 35-byte header).
BATCHED_VERSIONS: Final = frozenset({VERSION_2, VERSION})
HEADER_V1 = struct.Struct(">BBIQqQ")
HEADER_V1_LEN: Final = HEADER_V1.size  # 30
HEADER_V2 = struct.Struct(">BBIIBQqQ")
HEADER_V2_LEN: Final = HEADER_V2.size  # 35
#: Header length of the version this writer produces.
HEADER_LEN: Final = HEADER_V2_LEN
#: ``flags`` bit 0: this record closes its batch; the body ends with the batch seal.
FLAG_CLOSES_BATCH: Final = 0x01
#: Length of the batch seal (truncated HMAC-SHA256) on a batch's last record.
BATCH_SEAL_LEN: Final = 16
LEN_PREFIX = struct.Struct(">H")
LEN_PREFIX_LEN: Final = LEN_PREFIX.size
MAX_BODY_LEN: Final = 0xFFFF
MAX_PAYLOAD_LEN: Final = MAX_BODY_LEN - HEADER_LEN - TAG_LEN - BATCH_SEAL_LEN

INSTANCE_ID_LEN: Final = 16
BOOT_ID_LEN: Final = 16
SALT_LEN: Final = 16
HPKE_SEALED_LEN: Final = 32 + 32 + TAG_LEN  # enc || AES-256-GCM(chain key)
#: Length of the epoch seal (truncated HMAC-SHA256) that ends a version 3 EPOCH record.
EPOCH_SEAL_LEN: Final = 16
EPOCH_PLAIN = struct.Struct(f">{INSTANCE_ID_LEN}s{BOOT_ID_LEN}s{KEY_ID_LEN}s{SALT_LEN}s")
EPOCH_BODY_V1_LEN: Final = HEADER_V1_LEN + EPOCH_PLAIN.size + HPKE_SEALED_LEN  # 166
EPOCH_BODY_V2_LEN: Final = HEADER_V2_LEN + EPOCH_PLAIN.size + HPKE_SEALED_LEN  # 171
EPOCH_BODY_LEN: Final = EPOCH_BODY_V2_LEN + EPOCH_SEAL_LEN  # 187 (v3)
#: EPOCH body length by record version.
EPOCH_BODY_LENS: Final = {
    VERSION_1: EPOCH_BODY_V1_LEN,
    VERSION_2: EPOCH_BODY_V2_LEN,
    VERSION: EPOCH_BODY_LEN,
}

#: The chain hash before the first record of a ledger.
GENESIS_DOMAIN: Final = b"meterbox-ledger/1 genesis\x00"

FILE_MAGIC: Final = b"MBXL"
#: The file layout (header, then frames) is unchanged by record versions 2 and 3.
FILE_VERSION: Final = 1
FILE_HEADER = struct.Struct(f">4sB{INSTANCE_ID_LEN}sQ{HASH_LEN}s")
FILE_HEADER_LEN: Final = FILE_HEADER.size


class RecordType(enum.IntEnum):
    """Record types. Values are part of the format: never renumber, only add."""

    EPOCH = 1
    GENESIS = 2
    BOOT = 3
    SHUTDOWN = 4
    HEARTBEAT = 5
    CLOCK_STEP = 6
    CHECKPOINT = 7
    RECOVERY = 8
    USAGE = 9
    USAGE_DECREMENT = 10
    SEAT_CHECKOUT = 11
    SEAT_RENEW = 12
    SEAT_RELEASE = 13
    SEAT_EXPIRE = 14
    SEAT_DENIED = 15
    RECEIPT_IMPORTED = 16
    TOPUP_IMPORTED = 17
    LICENSE_INSTALLED = 18
    USAGE_DENIED = 19
    #: Everything enforcement needs, written right after every EPOCH record.
    STATE = 20
    #: At open, the ledger did not reach (or match) the batch its key state names.
    LEDGER_SHORTENED = 21
    #: The server rebuilt a cache file from the ledger at open.
    STATE_REBUILT = 22
    SEAT_UNKNOWN = 23
    WITNESS = 24
    WITNESS_MISMATCH = 25
    MACHINE_ACTIVATED = 26
    MACHINE_DEACTIVATED = 27
    SEAT_REMOVED = 28
    #: A vendor notice suspended (or, flagged, resumed) a license.
    LICENSE_SUSPENDED = 29
    #: A vendor notice revoked a license for good.
    LICENSE_REVOKED = 30
    #: A seat taken for use away from the server, until its borrow token expires.
    SEAT_BORROWED = 31
    #: A borrowed seat given back before its expiry.
    SEAT_RETURNED = 32
    TPM_ANCHOR = 33
    TPM_ROLLBACK = 34
    #: A cluster node joined or left its cluster (docs/adr/0024).
    CLUSTER_MEMBER = 35
    #: A cluster node took a block of a meter's shared quota (docs/adr/0025).
    QUOTA_BLOCK_TAKEN = 36
    #: A cluster node gave a quota block back, or reconciled one that expired.
    QUOTA_BLOCK_RETURNED = 37
    #: A cluster node lost or regained etcd quorum (docs/adr/0024).
    CLUSTER_QUORUM = 38
    #: The instance moved to another TPM on purpose (docs/adr/0031).
    TPM_REENROLLED = 39
    #: The server's answer to a vendor's TPM credential challenge (docs/adr/0036).
    TPM_CREDENTIAL = 40

    @property
    def kind(self) -> str:
        """Dotted lower-case name used by the server and the vendor store."""
        return _KINDS[self]

    @classmethod
    def from_kind(cls, kind: str) -> RecordType:
        try:
            return _BY_KIND[kind]
        except KeyError:
            raise FormatError(
                "unknown ledger record kind",
                expected="one of " + ", ".join(sorted(_BY_KIND)),
                found=repr(kind),
            ) from None


_KINDS: Final = {
    t: t.name.lower().replace("seat_", "seat.").replace("usage_", "usage.").replace("_", ".")
    for t in RecordType
}
_BY_KIND: Final = {v: k for k, v in _KINDS.items()}
#: Type numbers to members without an enum call per record.
BY_VALUE: Final = {t.value: t for t in RecordType}
#: Types a server may append; the rest are written by the ledger itself.
#: Clock steps, boots and shutdowns are evidence the ledger gathers itself, so a server
#: (or anything else holding the writer) cannot fabricate them.
INTERNAL_TYPES: Final = frozenset(
    {
        RecordType.EPOCH,
        RecordType.GENESIS,
        RecordType.CHECKPOINT,
        RecordType.RECOVERY,
        RecordType.CLOCK_STEP,
        RecordType.BOOT,
        RecordType.SHUTDOWN,
        RecordType.LEDGER_SHORTENED,
        RecordType.STATE,
    }
)


_new_tuple = tuple.__new__
_BATCHED_FIRST_BYTES: Final = frozenset(bytes([v]) for v in BATCHED_VERSIONS)


class Header(NamedTuple):
    """The authenticated header of every record (a tuple: the verifier's hot path).

    ``batch`` and ``flags`` exist from version 2 on; a version 1 header reads them as 0.
    """

    version: int
    type: int
    epoch: int
    seq: int
    wall_ms: int
    mono_ms: int
    batch: int = 0
    flags: int = 0

    @property
    def size(self) -> int:
        return HEADER_V1_LEN if self.version == VERSION_1 else HEADER_V2_LEN

    def pack(self) -> bytes:
        if self.version == VERSION_1:
            return HEADER_V1.pack(*self[:6])
        v, t, e, s, w, m, b, f = self
        return HEADER_V2.pack(v, t, e, b, f, s, w, m)

    @classmethod
    def unpack(cls, body: bytes) -> Header:
        # Versions 2 and 3 are recognised by their first byte; anything else is read with
        # the version 1 layout, so an unknown version is still named by its version byte.
        if body[:1] in _BATCHED_FIRST_BYTES:
            if len(body) < HEADER_V2_LEN:
                raise FormatError(
                    "ledger record is shorter than its header",
                    expected=f"at least {HEADER_V2_LEN} bytes",
                    found=f"{len(body)} bytes",
                )
            v, t, e, b, f, s, w, m = HEADER_V2.unpack_from(body)
            return _new_tuple(cls, (v, t, e, s, w, m, b, f))
        if len(body) < HEADER_V1_LEN:
            raise FormatError(
                "ledger record is shorter than its header",
                expected=f"at least {HEADER_V1_LEN} bytes",
                found=f"{len(body)} bytes",
            )
        return _new_tuple(cls, (*HEADER_V1.unpack_from(body), 0, 0))


@dataclass(frozen=True, slots=True)
class EpochPlain:
    """The plaintext part of an EPOCH record, bound into the HPKE info."""

    instance_id: bytes
    boot_id: bytes
    vendor_key_id: bytes
    salt: bytes

    def pack(self) -> bytes:
        return EPOCH_PLAIN.pack(self.instance_id, self.boot_id, self.vendor_key_id, self.salt)

    @classmethod
    def unpack(cls, data: bytes) -> EpochPlain:
        return cls(*EPOCH_PLAIN.unpack_from(data))


def frame(body: bytes) -> bytes:
    if len(body) > MAX_BODY_LEN:
        raise FormatError(
            "ledger record is too large",
            expected=f"a body of at most {MAX_BODY_LEN} bytes",
            found=f"{len(body)} bytes",
            hint="keep record payloads small; large data does not belong in the ledger",
        )
    return LEN_PREFIX.pack(len(body)) + body


def chain(prev_hash: bytes, frame_bytes: bytes) -> bytes:
    return hashlib.sha256(prev_hash + frame_bytes).digest()


def genesis_hash(instance_id: bytes) -> bytes:
    return sha256(GENESIS_DOMAIN, instance_id)


def nonce(epoch: int, seq: int) -> bytes:
    return struct.pack(">IQ", epoch, seq)


def pack_payload(payload: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    if len(data) > MAX_PAYLOAD_LEN:
        raise FormatError(
            "ledger record payload is too large",
            expected=f"at most {MAX_PAYLOAD_LEN} bytes of msgpack",
            found=f"{len(data)} bytes",
        )
    return data


def unpack_payload(data: bytes) -> dict[str, Any]:
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BODY_LEN)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FormatError(
            "ledger record payload is not valid msgpack",
            expected="a msgpack map",
            found=type(exc).__name__,
        ) from None
    if not isinstance(value, dict):
        raise FormatError(
            "ledger record payload is not a map",
            expected="a msgpack map",
            found=type(value).__name__,
        )
    return value


@dataclass(frozen=True, slots=True)
class FileHeader:
    """Start of a ledger file: where its first frame sits in the chain."""

    instance_id: bytes
    base_seq: int
    base_hash: bytes

    def pack(self) -> bytes:
        return FILE_HEADER.pack(
            FILE_MAGIC, FILE_VERSION, self.instance_id, self.base_seq, self.base_hash
        )

    @classmethod
    def unpack(cls, data: bytes) -> FileHeader:
        if len(data) < FILE_HEADER_LEN:
            raise FormatError(
                "ledger file is shorter than its header",
                expected=f"{FILE_HEADER_LEN} bytes",
                found=f"{len(data)} bytes",
            )
        magic, version, instance_id, base_seq, base_hash = FILE_HEADER.unpack_from(data)
        if magic != FILE_MAGIC:
            raise FormatError(
                "not a meterbox ledger file", expected=repr(FILE_MAGIC), found=repr(magic)
            )
        if version != FILE_VERSION:
            raise UnknownVersionError(
                "unknown ledger file version",
                expected=f"version {FILE_VERSION}",
                found=f"version {version}",
                hint="upgrade meterbox to read this ledger",
            )
        return cls(instance_id, base_seq, base_hash)
