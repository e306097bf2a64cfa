"""Take a report apart and put it back together, re-signed with the instance key.

This is what a customer who extracted the instance key can do: it isolates what the
ledger itself detects from what the report signature detects.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meterbox.ledger._format import LEN_PREFIX
from meterbox.ledger._format import chain as chain_hash
from meterbox.ledger._report import SIGNATURE_DOMAIN

_U32 = struct.Struct(">I")


@dataclass
class Parts:
    header: dict[str, Any]
    frames: list[bytes]
    trailer: dict[str, Any]


def _walk(data: bytes) -> tuple[dict[str, Any], list[tuple[int, int]], int]:
    """The header, the (start, end) offsets of every frame, and where the frames stop."""
    (hlen,) = _U32.unpack_from(data, 5)
    header = msgpack.unpackb(data[9 : 9 + hlen], raw=False)
    pos = 9 + hlen
    end = pos + header["frames_len"]
    offsets = []
    while pos < end:
        (n,) = LEN_PREFIX.unpack_from(data, pos)
        offsets.append((pos, pos + 2 + n))
        pos += 2 + n
    return header, offsets, pos


def split(data: bytes) -> Parts:
    header, offsets, pos = _walk(data)
    (tlen,) = _U32.unpack_from(data, pos + 4)
    trailer = msgpack.unpackb(data[pos + 8 : pos + 8 + tlen], raw=False)
    return Parts(header, [data[start:stop] for start, stop in offsets], trailer)


def frame_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte offsets of every frame inside a report."""
    return _walk(data)[1]


def frame_seq(frame: bytes) -> int:
    """The seq of a frame, in any record version (v2 and v3 add batch and flags before it)."""
    return int(struct.unpack_from(">Q", frame, 2 + (11 if frame[2] in (2, 3) else 6))[0])


def join(
    parts: Parts, key: Ed25519PrivateKey, *, fix_trailer: bool = True, fix_len: bool = True
) -> bytes:
    header = dict(parts.header)
    body = b"".join(parts.frames)
    if fix_len:
        header["frames_len"] = len(body)
    trailer = dict(parts.trailer)
    if fix_trailer and parts.frames:
        h = header["base_hash"]
        for f in parts.frames:
            h = chain_hash(h, f)
        trailer["head_hash"] = h
        trailer["head_seq"] = frame_seq(parts.frames[-1])
    packed = msgpack.packb(header, use_bin_type=True)
    tpacked = msgpack.packb(trailer, use_bin_type=True)
    out = b"MBXR\x01" + _U32.pack(len(packed)) + packed + body + b"MBXT"
    out += _U32.pack(len(tpacked)) + tpacked
    return out + key.sign(SIGNATURE_DOMAIN + hashlib.sha256(out).digest())
