"""The key state (``chain.key``): which batch the ledger's keys belong to, written per batch.

The file holds two fixed-size slots (docs/spec/ledger.md, "Key state"). Each slot is a
whole key state with a generation number and a SHA-256 checksum; the valid slot with
the highest generation is the key state. A write goes to the *other* slot, in place,
followed by one ``fdatasync``; only then is the previous slot overwritten with zeros
(without a sync of its own: the next write's sync covers it). So:

- a crash or power loss at any point leaves at least one whole slot: the new one once
  its sync returned, else the previous one (a torn slot fails its checksum);
- a reader of the file sees one valid slot, except for the instant between the sync
  and the wipe: the previous batch key is gone from the file as soon as the next
  batch is committed (a raw copy of the disk blocks may still hold it until the next
  sync overwrites them: software cannot promise more on a file system it does not own).

:meth:`KeyState.unpack` is pure; :class:`KeyStateFile` is the thin I/O shell.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from meterbox._fs import atomic_write, pwrite_all
from meterbox.crypto import HASH_LEN, KEY_LEN, constant_time_equal, sha256
from meterbox.errors import StateError

MAGIC: Final = b"MBKS"
VERSION: Final = 2
_BODY = struct.Struct(f">4sBQIIQ{HASH_LEN}s{KEY_LEN}s{KEY_LEN}s{KEY_LEN}s")
CHECKSUM_DOMAIN: Final = b"meterbox key state/2\x00"
SLOT_LEN: Final = 192
_PAD: Final = SLOT_LEN - _BODY.size - HASH_LEN
FILE_LEN: Final = 2 * SLOT_LEN


@dataclass(frozen=True, slots=True)
class KeyState:
    """The keys of the next batch, and the ledger point they follow.

    ``epoch``/``batch``: the batch the next records are sealed in. ``last_seq`` and
    ``last_hash``: the head of the ledger when this key state was written (the last
    frame of the previous batch, or the EPOCH record that opened ``epoch``). Every
    acknowledged record is at or before ``last_seq``: a ledger that ends earlier was
    shortened.
    """

    generation: int
    epoch: int
    batch: int
    last_seq: int
    last_hash: bytes
    record_key: bytes
    batch_key: bytes
    next_epoch_key: bytes

    def pack(self) -> bytes:
        body = _BODY.pack(
            MAGIC,
            VERSION,
            self.generation,
            self.epoch,
            self.batch,
            self.last_seq,
            self.last_hash,
            self.record_key,
            self.batch_key,
            self.next_epoch_key,
        ) + bytes(_PAD)
        return body + sha256(CHECKSUM_DOMAIN, body)

    @classmethod
    def unpack(cls, slot: bytes) -> KeyState | None:
        """The key state in ``slot``, or ``None`` if the slot is empty, torn or damaged."""
        if len(slot) != SLOT_LEN:
            return None
        body, checksum = slot[:-HASH_LEN], slot[-HASH_LEN:]
        if not constant_time_equal(sha256(CHECKSUM_DOMAIN, body), checksum):
            return None
        magic, version, gen, epoch, batch, last_seq, last_hash, rk, bk, nk = _BODY.unpack_from(body)
        if magic != MAGIC or version != VERSION:
            return None
        return cls(gen, epoch, batch, last_seq, last_hash, rk, bk, nk)


def parse(data: bytes, path: Path) -> tuple[KeyState, int]:
    """The current key state in a key state file's bytes, and the slot it is in."""
    if len(data) != FILE_LEN:
        raise StateError(
            "the ledger's chain key is damaged",
            expected=f"a key state file of {FILE_LEN} bytes in {path}",
            found=f"{len(data)} bytes",
            hint="restore chain.key from the same backup as the ledger",
        )
    slots = [KeyState.unpack(data[i * SLOT_LEN : (i + 1) * SLOT_LEN]) for i in (0, 1)]
    valid = [(s, i) for i, s in enumerate(slots) if s is not None]
    if not valid:
        raise StateError(
            "the ledger's chain key is damaged",
            expected=f"a slot with a valid checksum in {path}",
            found="two damaged or empty slots",
            hint="restore chain.key from the same backup as the ledger",
        )
    return max(valid, key=lambda pair: pair[0].generation)


def read(directory: Path, name: str) -> KeyState:
    """Read the key state without opening it for writing."""
    path = directory / name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateError(
            "the ledger's chain key is missing",
            expected=str(path),
            found="no such file",
            hint="restore it from the same backup as the ledger; without it the ledger cannot grow",
        ) from None
    return parse(data, path)[0]


def create(directory: Path, name: str, state: KeyState) -> None:
    """Write a new key state file (slot 0 holds ``state``) atomically."""
    atomic_write(directory / name, state.pack() + bytes(SLOT_LEN))


class KeyStateFile:
    """The open key state file: one in-place slot write and one fdatasync per batch."""

    def __init__(self, fd: int, current: KeyState, slot: int) -> None:
        self._fd = fd
        self.current = current
        self._slot = slot
        #: Set when a failed write could not be undone: the file may name a batch the
        #: ledger does not hold, so the writer must stop.
        self.uncertain = False

    @classmethod
    def open(cls, directory: Path, name: str) -> KeyStateFile:
        path = directory / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            read(directory, name)  # raises the "missing" error
            raise
        try:
            data = os.pread(fd, FILE_LEN + 1, 0)
            current, slot = parse(data, path)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, current, slot)

    def write(self, state: KeyState) -> None:
        """Make ``state`` the key state durably, then erase the previous one from the file.

        ``state.generation`` is set here. On failure the previous key state stays the
        current one; the half-written slot is wiped (``uncertain`` if that fails too).
        """
        gen = self.current.generation + 1
        state = KeyState(
            gen,
            state.epoch,
            state.batch,
            state.last_seq,
            state.last_hash,
            state.record_key,
            state.batch_key,
            state.next_epoch_key,
        )
        slot = 1 - self._slot
        try:
            pwrite_all(self._fd, state.pack(), slot * SLOT_LEN)
            os.fdatasync(self._fd)
        except OSError:
            try:
                pwrite_all(self._fd, bytes(SLOT_LEN), slot * SLOT_LEN)
                os.fdatasync(self._fd)
            except OSError:
                self.uncertain = True
            raise
        # The new slot is durable: the previous key must not stay readable. The wipe is
        # made durable by the next write's sync; a crash before then leaves both slots
        # valid, and the higher generation wins.
        with contextlib.suppress(OSError):
            pwrite_all(self._fd, bytes(SLOT_LEN), self._slot * SLOT_LEN)
        self.current, self._slot = state, slot

    def close(self) -> None:
        os.close(self._fd)
