"""Opening a ledger after a crash: the recovery scan (docs/spec/ledger.md, Write step 7).

The scan walks the file from its header with the server's own chain key. Every frame
must parse and carry the next seq; frames of the key file's epoch and the one after
it (one ratchet step away) must authenticate; earlier epochs are checked for sequence
only, because their keys are erased. The scan stops at the first failure: what lies
after the last good frame is a torn tail. Pure apart from reading the file through a
duplicated descriptor; it never writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from meterbox.crypto import AeadKey
from meterbox.errors import FormatError, MeterboxError, StateError
from meterbox.ledger._fold import EpochFold
from meterbox.ledger._format import FILE_HEADER_LEN, FileHeader, Header, RecordType, chain
from meterbox.ledger._frames import (
    FrameReader,
    RawFrame,
    Record,
    open_record,
    parse_epoch,
    parse_header,
)
from meterbox.ledger._keys import ratchet, record_key


@dataclass(frozen=True, slots=True)
class Recovery:
    """What opening the ledger had to repair."""

    cut_offset: int
    cut_bytes: int
    last_good_seq: int
    #: The highest seq the caller's state had applied, so acknowledged (``replay_after``).
    acked_seq: int | None = None
    #: How many of the records up to ``acked_seq`` the cut removed. Durable writes
    #: make this 0; anything else means acknowledged records were lost.
    acked_lost: int | None = None


@dataclass(frozen=True, slots=True)
class EpochStart:
    seq: int
    offset: int
    prev_hash: bytes


@dataclass(frozen=True, slots=True)
class Scan:
    header: FileHeader
    good_end: int
    next_seq: int
    head_hash: bytes
    last_epoch: int
    epochs: list[EpochStart]
    problem: str | None
    replayed: list[Record]


class _Walk:
    """The scan's running state: what is known good so far."""

    def __init__(self, header: FileHeader, key_epoch: int, chain_key: bytes) -> None:
        self.key_epoch = key_epoch
        self.chain_key = chain_key
        self.next_seq = header.base_seq
        self.head = header.base_hash
        self.good_end = FILE_HEADER_LEN
        self.last_epoch = -1
        self.epochs: list[EpochStart] = []
        self.keys: dict[int, AeadKey] = {}

    def check(self, raw: RawFrame) -> Record | None:
        """Raise if ``raw`` is not the next good frame; return it opened if our keys reach."""
        hdr: Header = parse_header(raw.body)
        if hdr.seq != self.next_seq:
            raise FormatError("sequence break", expected=str(self.next_seq), found=str(hdr.seq))
        if hdr.type == RecordType.EPOCH:
            ep = parse_epoch(raw.body, hdr)
            if hdr.epoch in (self.key_epoch, self.key_epoch + 1):
                ck = self.chain_key if hdr.epoch == self.key_epoch else ratchet(self.chain_key)
                self.keys[hdr.epoch] = record_key(ck, ep.plain.salt)
            self.epochs.append(EpochStart(hdr.seq, raw.offset, self.head))
            self.last_epoch = hdr.epoch
            return None
        if hdr.epoch in self.keys:
            return open_record(raw.body, hdr, self.keys[hdr.epoch])
        if hdr.epoch >= self.key_epoch:
            raise FormatError(
                "record in an epoch with no EPOCH record",
                expected="an EPOCH record first",
                found=f"epoch {hdr.epoch}",
            )
        return None

    def accept(self, raw: RawFrame) -> None:
        self.head = chain(self.head, raw.data)
        self.next_seq += 1
        self.good_end = raw.offset + len(raw.data)


def scan(
    fd: int,
    key_epoch: int,
    chain_key: bytes,
    replay_after: int | None = None,
    *,
    fold: EpochFold | None = None,
) -> Scan:
    """Walk the ledger file; authenticate what our key reaches; find where it stops being good.

    With ``fold``, every good record of the epochs the key opens is streamed into it
    (the fold that rebuilds the server's state; the last epoch's is what remains).
    """
    with os.fdopen(os.dup(fd), "rb") as stream:
        header = FileHeader.unpack(stream.read(FILE_HEADER_LEN))
        walk = _Walk(header, key_epoch, chain_key)
        replayed: list[Record] = []
        problem: str | None = None
        for raw in FrameReader(stream, start_offset=FILE_HEADER_LEN):
            try:
                record = walk.check(raw)
            except MeterboxError as exc:
                problem = f"at offset {raw.offset}: {exc.problem}"
                break
            walk.accept(raw)
            if record is None:
                opened_epoch = walk.epochs[-1].offset == raw.offset
                if fold is not None and opened_epoch and walk.last_epoch in walk.keys:
                    fold.epoch(walk.epochs[-1].seq)
                continue
            if fold is not None:
                fold.record(record)
            if replay_after is not None and record.seq > replay_after:
                replayed.append(record)
        if walk.last_epoch < 0:
            raise StateError(
                "ledger file has no epoch record",
                expected="an EPOCH record at the start of the ledger",
                found="none",
            )
        return Scan(
            header,
            walk.good_end,
            walk.next_seq,
            walk.head,
            walk.last_epoch,
            walk.epochs,
            problem,
            replayed,
        )


def resume_key(scan_result: Scan, key_epoch: int, chain_key: bytes) -> bytes:
    """The chain key of the file's last epoch, from the key file's (at most one step behind)."""
    last_epoch = scan_result.last_epoch
    if last_epoch == key_epoch + 1:
        return ratchet(chain_key)
    if last_epoch != key_epoch:
        raise StateError(
            "chain key does not match the ledger",
            expected=f"a key for epoch {last_epoch} or {last_epoch - 1}",
            found=f"a key for epoch {key_epoch}",
            hint="chain.key was restored from another time; the ledger cannot continue",
        )
    return chain_key


def torn_tail(
    scan_result: Scan,
    file_size: int,
    max_torn_bytes: int,
    force: bool,
    acked_seq: int | None = None,
) -> Recovery | None:
    """What to cut after the last good frame, or refuse when it is more than a torn write.

    ``acked_seq`` is the highest seq the server had acknowledged as far as its state
    knows; the result says how many acknowledged records the cut would remove.
    """
    if scan_result.good_end >= file_size:
        return None
    cut = file_size - scan_result.good_end
    if cut > max_torn_bytes and not force:
        raise StateError(
            "ledger is damaged before its tail",
            expected=f"at most {max_torn_bytes} unsynced bytes at the end",
            found=f"{cut} bytes after offset {scan_result.good_end} that do not verify"
            + (f" ({scan_result.problem})" if scan_result.problem else ""),
            hint="keep a copy of the directory, then run 'meterbox server run "
            "--force-recover'; the cut is recorded and reported to the vendor",
        )
    last_good = scan_result.next_seq - 1
    lost = None if acked_seq is None else max(0, acked_seq - last_good)
    return Recovery(scan_result.good_end, cut, last_good, acked_seq, lost)
