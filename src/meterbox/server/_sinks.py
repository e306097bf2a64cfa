"""Where the server's events go once decided: the :class:`EventSink` protocol.

The HTTP shell writes one record per decision and answers only once
:meth:`EventSink.record` has returned, i.e. once the record is durable.

* :class:`LedgerEventSink` adapts ``meterbox.ledger.LedgerWriter`` (the sealed,
  vendor-encrypted ledger) and is what production uses.
* :class:`FileEventSink` is the test and debug sink: length-prefixed MessagePack
  frames ``[seq, kind, payload, chain]`` appended to a plain file and ``fsync``-ed,
  with group commit. It is neither sealed nor encrypted; never ship it to a vendor.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgpack

from meterbox.errors import FormatError
from meterbox.ledger import ClockSteps, hash_at
from meterbox.server._batch import GroupCommitter
from meterbox.server._errors import UnavailableError

_LEN = struct.Struct(">I")
_ZERO = bytes(32)


class EventSink(Protocol):
    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        """Write one record durably and return its sequence number."""
        ...


@runtime_checkable
class HasHead(Protocol):
    def head_info(self) -> tuple[int, str]:
        """The sequence number and hex hash of the last durable record."""
        ...


@runtime_checkable
class HasClockSteps(Protocol):
    def clock_steps(self) -> ClockSteps:
        """The wall-clock steps the ledger writer sealed since it opened."""
        ...


class _Writer(Protocol):
    def submit(self, record_type: Any, payload: dict[str, Any]) -> Future[Any]: ...

    @property
    def head(self) -> Any: ...

    @property
    def clock_steps(self) -> ClockSteps: ...

    def snapshot(self) -> contextlib.AbstractContextManager[Any]: ...


class LedgerEventSink:
    """Adapter from ``LedgerWriter`` (group commit in its own thread) to :class:`EventSink`.

    ``record_type`` maps the server's kind strings to the ledger's record types; by
    default the string itself is passed.
    """

    def __init__(self, writer: _Writer, record_type: Callable[[str], Any] = str) -> None:
        self._writer = writer
        self._record_type = record_type

    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        try:
            fut = self._writer.submit(self._record_type(kind), payload)
            appended = await asyncio.wrap_future(fut)
        except Exception as exc:
            raise UnavailableError(
                "The ledger could not write the record",
                expected="a writable ledger",
                found=f"{type(exc).__name__}: {exc}",
                hint="Retry later; check disk space and the server log",
            ) from exc
        return int(appended.seq)

    def record_nowait(self, kind: str, payload: dict[str, Any]) -> Future[Any]:
        """Queue one record without waiting for it (evidence whose answer nobody awaits).

        Saves the event-loop round trip of :meth:`record`; the writer still seals it in
        order and makes it durable with its batch. Close the writer to flush it.
        """
        return self._writer.submit(self._record_type(kind), payload)

    def clock_steps(self) -> ClockSteps:
        """The writer's own clock-step evidence: the count and last step it sealed."""
        return self._writer.clock_steps

    def head_info(self) -> tuple[int, str]:
        head = self._writer.head
        raw = head.hash
        return int(head.seq), raw.hex() if isinstance(raw, bytes) else str(raw)

    def has_head(self, seq: int, head_hash: bytes) -> bool:
        """Whether the chain hash of this ledger at ``seq`` is ``head_hash`` (reads the file).

        Reads a snapshot, so appends go on meanwhile. A seq compacted away was
        acknowledged by a receipt: nothing is left to compare, and it counts as had.
        """
        with self._writer.snapshot() as snap:
            if seq < snap.header.base_seq:
                return True
            found = hash_at(snap.header, snap.chunks(), seq)
        return found is not None and hmac.compare_digest(found, head_hash)


def read_frames(path: str | os.PathLike[str]) -> Iterator[tuple[int, str, dict[str, Any], bytes]]:
    """Yield ``(seq, kind, payload, chain)`` from a :class:`FileEventSink` file.

    A torn last frame (crash mid-write) ends the iteration; anything else that does
    not parse raises :class:`FormatError`.
    """
    data = Path(path).read_bytes()
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            return
        try:
            seq, kind, payload, chain = msgpack.unpackb(
                data[pos + _LEN.size : pos + _LEN.size + n], raw=False
            )
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise FormatError(
                "Event file frame does not parse",
                expected="a MessagePack array [seq, kind, payload, chain]",
                found=f"{type(exc).__name__} at byte {pos}",
            ) from exc
        yield int(seq), str(kind), dict(payload), bytes(chain)
        pos += _LEN.size + n


class FileEventSink:
    """Test/debug sink: appends frames to ``path`` and ``fsync``-s each batch.

    Sequence numbers continue after the last complete frame already in the file.
    Each frame carries ``chain = SHA-256(previous chain || msgpack([seq, kind, payload]))``
    so the head identifies the whole history.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seq = 0
        self._chain = _ZERO
        good = 0
        if self.path.exists():
            for seq, _, _, chain in read_frames(self.path):
                self._seq, self._chain = seq, chain
            good = sum(_LEN.size + len(f) for f in _raw_frames(self.path))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        # Cut a torn tail so new frames follow the last complete one.
        os.ftruncate(self._fd, good)
        os.lseek(self._fd, good, os.SEEK_SET)
        self._lock = threading.Lock()
        self._committer: GroupCommitter[tuple[str, dict[str, Any]], int] = GroupCommitter(
            self._flush
        )
        self.fsyncs = 0

    def _flush(self, items: list[tuple[str, dict[str, Any]]]) -> list[int]:
        with self._lock:
            out = bytearray()
            seqs = []
            seq, chain = self._seq, self._chain
            for kind, payload in items:
                seq += 1
                body = msgpack.packb([seq, kind, payload], use_bin_type=True)
                chain = hashlib.sha256(chain + body).digest()
                frame = msgpack.packb([seq, kind, payload, chain], use_bin_type=True)
                out += _LEN.pack(len(frame)) + frame
                seqs.append(seq)
            os.write(self._fd, bytes(out))
            os.fsync(self._fd)
            self.fsyncs += 1
            self._seq, self._chain = seq, chain
            return seqs

    async def record(self, kind: str, payload: dict[str, Any]) -> int:
        return await self._committer.submit((kind, payload))

    def head_info(self) -> tuple[int, str]:
        return self._seq, self._chain.hex()

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


def _raw_frames(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    pos = 0
    while pos + _LEN.size <= len(data):
        (n,) = _LEN.unpack_from(data, pos)
        if pos + _LEN.size + n > len(data):
            return
        yield data[pos + _LEN.size : pos + _LEN.size + n]
        pos += _LEN.size + n
