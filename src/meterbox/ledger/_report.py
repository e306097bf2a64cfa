"""Reports: the container layout and the export a server writes (docs/spec/report.md).

Layout, version 1::

    "MBXR" | u8 version | u32 header_len | header (msgpack map)
    frames (exactly header["frames_len"] bytes, copied from the ledger file)
    "MBXT" | u32 trailer_len | trailer (msgpack map) | Ed25519 signature (64 bytes)

The signature, by the instance key named in the header, covers
``b"meterbox-report/1\\x00" || SHA-256(every byte before the signature)``.

Export holds compaction off for its whole run, so the frames copied start at the
header's ``base_seq`` and end at the trailer's head. The vendor's side, streaming
verification, is :mod:`meterbox.ledger._verify`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import msgpack

from meterbox import __version__
from meterbox.clock import Clock
from meterbox.crypto import (
    ed25519_raw_public,
    sign,
)
from meterbox.errors import StateError
from meterbox.ledger._seal import Head
from meterbox.ledger._writer import LedgerWriter, Snapshot

REPORT_MAGIC: Final = b"MBXR"
TRAILER_MAGIC: Final = b"MBXT"
REPORT_VERSION: Final = 1
SIGNATURE_DOMAIN: Final = b"meterbox-report/1\x00"
SIGNATURE_LEN: Final = 64
MAX_HEADER_LEN: Final = 16 << 20
MAX_TRAILER_LEN: Final = 1 << 16
U32: Final = struct.Struct(">I")


# ---------------------------------------------------------------------- export
@dataclass(frozen=True, slots=True)
class ExportInfo:
    head: Head
    base_seq: int
    frames_len: int
    digest: bytes


def export_report(
    writer: LedgerWriter,
    out: BinaryIO,
    *,
    clock: Clock,
    licenses: list[bytes],
    acked: Head | None,
    extra: Mapping[str, Any] | None = None,
    extra_for: Callable[[Head], Mapping[str, Any]] | None = None,
) -> ExportInfo:
    """Write a signed report of every durable record in the ledger file.

    ``extra_for``, when given, is called with the head the report will end at and its
    result is merged into ``extra``: how a TPM attestation is bound to that very head.
    """
    with writer.snapshot() as snap:
        if extra_for is not None:
            extra = {**(extra or {}), **extra_for(snap.head)}
        return _export(writer, snap, out, clock, licenses, acked, extra)


def _export(
    writer: LedgerWriter,
    snap: Snapshot,
    out: BinaryIO,
    clock: Clock,
    licenses: list[bytes],
    acked: Head | None,
    extra: Mapping[str, Any] | None,
) -> ExportInfo:
    file_header, head = snap.header, snap.head
    frames_len = snap.frames_len
    header = {
        "v": REPORT_VERSION,
        "instance_id": writer.instance_id,
        "instance_key": ed25519_raw_public(writer.instance_key.public_key()),
        "vendor_key_id": writer._sealer.vendor_key_id,
        "created_ms": clock.wall_ms(),
        "base_seq": file_header.base_seq,
        "base_hash": file_header.base_hash,
        "frames_len": frames_len,
        "acked": [acked.seq, acked.hash] if acked else None,
        "licenses": licenses,
        "software": f"meterbox {__version__}",
        "extra": dict(extra or {}),
    }
    digest = hashlib.sha256()
    whole = hashlib.sha256()

    def emit(data: bytes) -> None:
        digest.update(data)
        whole.update(data)
        out.write(data)

    packed = msgpack.packb(header, use_bin_type=True)
    emit(REPORT_MAGIC + bytes([REPORT_VERSION]) + U32.pack(len(packed)) + packed)
    written = 0
    for chunk in snap.chunks():
        emit(chunk)
        written += len(chunk)
    if written != frames_len:
        raise StateError(
            "the ledger file is shorter than its durable length",
            expected=f"{frames_len} bytes of records",
            found=f"{written} bytes",
            hint="the ledger file was changed behind the server's back",
        )
    trailer = msgpack.packb(
        {
            "head_seq": head.seq,
            "head_hash": head.hash,
            "count": head.seq - file_header.base_seq + 1,
        },
        use_bin_type=True,
    )
    emit(TRAILER_MAGIC + U32.pack(len(trailer)) + trailer)
    signature = sign(writer.instance_key, SIGNATURE_DOMAIN + digest.digest())
    whole.update(signature)
    out.write(signature)
    return ExportInfo(head, file_header.base_seq, frames_len, whole.digest())
