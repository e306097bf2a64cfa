"""The chain hashes of a ledger's last records, recomputed from its frames. Pure SHA-256.

No key is needed: the chain hash ``h_i = SHA-256(h_{i-1} || frame_i)`` (ledger.md)
depends on the frames' bytes only. The server uses it at open to know the heads a
client may hand back as a witness (docs/spec/witness.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from meterbox.ledger._format import LEN_PREFIX, FileHeader, chain


def recent_heads(header: FileHeader, chunks: Iterable[bytes], keep: int) -> list[tuple[int, bytes]]:
    """``(seq, chain hash)`` of the last ``keep`` complete frames in ``chunks``, oldest first.

    ``chunks`` are the frames' bytes in order, as :meth:`LedgerWriter.snapshot` gives
    them; an incomplete last frame is not counted.
    """
    recent: deque[tuple[int, bytes]] = deque(maxlen=keep)
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
            recent.append((seq, h))
            pos = end
        del buf[:pos]
    return list(recent)
