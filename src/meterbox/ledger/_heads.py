"""The chain hashes of a ledger's records, recomputed from its frames. Pure SHA-256.

No key is needed: the chain hash ``h_i = SHA-256(h_{i-1} || frame_i)`` (ledger.md)
depends on the frames' bytes only. The server uses it to judge the heads a client
hands back as a witness (docs/spec/witness.md): at open, for the last heads, and for
an older head on demand.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from meterbox.ledger._format import LEN_PREFIX, FileHeader, chain


def _heads(header: FileHeader, chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(seq, h_seq)`` of every complete frame in ``chunks``, in order."""
    h, seq = header.base_hash, header.base_seq - 1
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        pos = 0
        while pos + LEN_PREFIX.size <= len(buf):
            (n,) = LEN_PREFIX.unpack_from(buf, pos)
            end = pos + LEN_PREFIX.size + n
            if end > len(buf):
                break
            h = chain(h, bytes(buf[pos:end]))
            seq += 1
            yield seq, h
            pos = end
        del buf[:pos]


def recent_heads(header: FileHeader, chunks: Iterable[bytes], keep: int) -> list[tuple[int, bytes]]:
    """``(seq, chain hash)`` of the last ``keep`` complete frames in ``chunks``, oldest first.

    ``chunks`` are the frames' bytes in order, as :meth:`LedgerWriter.snapshot` gives
    them; an incomplete last frame is not counted.
    """
    return list(deque(_heads(header, chunks), maxlen=keep))


def hash_at(header: FileHeader, chunks: Iterable[bytes], seq: int) -> bytes | None:
    """The chain hash through frame ``seq``; None if ``chunks`` end before it.

    A ``seq`` before the file's first frame has no hash here (compacted away).
    """
    if seq < header.base_seq:
        return None
    for s, h in _heads(header, chunks):
        if s == seq:
            return h
    return None
