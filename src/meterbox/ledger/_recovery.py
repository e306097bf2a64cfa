"""Opening a ledger after a crash: the recovery scan (docs/spec/ledger.md, Produce step 7).

The scan walks the file from its header with the server's key state (``chain.key``).
Every frame must parse and carry the next seq. Records of the key state's epoch and of
later epochs are authenticated with their record keys (so they can be replayed); earlier
epochs are checked for sequence only, their keys erased. After the key state's point
(the head when it was written) frames must form whole write units -- a batch ending in
a seal that verifies under the batch key, or an EPOCH record whose epoch seal verifies
under the chain key the key state ratchets to (record version 3, ADR 0030) -- and the
scan stops at the first frame that fails: what lies after the last whole unit is a torn
tail. A torn EPOCH record is therefore cut with the STATE run written after it.

:func:`shortened` then compares the ledger with what the key state names: a ledger that
ends before that point, or differs at it, was shortened; more than one unit after it
means the key state is older than the ledger (a saved copy put back). Pure apart from
reading the file through a duplicated descriptor; it never writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from meterbox.crypto import AeadKey, constant_time_equal
from meterbox.errors import FormatError, MeterboxError, StateError
from meterbox.ledger._fold import EpochFold
from meterbox.ledger._format import (
    BATCHED_VERSIONS,
    FILE_HEADER_LEN,
    VERSION,
    VERSION_2,
    FileHeader,
    Header,
    RecordType,
    chain,
)
from meterbox.ledger._frames import (
    FrameReader,
    RawFrame,
    Record,
    open_record,
    parse_epoch,
    parse_header,
    unsealed_epoch_frame,
    unsealed_frame,
)
from meterbox.ledger._keys import (
    MAX_RATCHET_STEPS,
    batch_root,
    batch_seal,
    epoch_seal,
    next_batch_key,
    ratchet,
    record_key,
)
from meterbox.ledger._keystate import KeyState


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
class Shortened:
    """The ledger does not reach, or does not match, the point its key state names."""

    reason: str  # "shorter", "diverged" or "key_behind"
    key: KeyState
    ledger_seq: int
    ledger_hash: bytes


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
    #: The chain hash through the key state's ``last_seq``, if the ledger reaches it.
    hash_at_key: bytes | None
    #: Write units (a sealed batch, an EPOCH record) after the key state's point.
    units_beyond: int
    #: Whether the first unit after the key state's point is one its keys wrote.
    first_unit_expected: bool
    #: The key the next EPOCH record carries: ``c_{last_epoch + 1}``.
    next_epoch_key: bytes


class _EpochKeys:
    """What the scan can check in one epoch: its record key, and its batches from one on."""

    def __init__(self, record: AeadKey | None, batch: int, batch_key: bytes | None) -> None:
        self.record = record
        self.batch = batch
        self.batch_key = batch_key


class _Walk:
    """The scan's running state: what is known good so far.

    The key state ``ks`` names a point (``last_seq``). Frames up to it were committed:
    they are checked for sequence (and authenticated where the epoch's record key is
    held). Frames after it must come in whole write units -- a sealed batch or an EPOCH
    record -- each checked with the keys the key state leads to; a unit not complete is
    a torn tail.
    """

    def __init__(self, header: FileHeader, ks: KeyState) -> None:
        self.ks = ks
        self.next_seq = header.base_seq
        self.head = header.base_hash
        self.last_epoch = -1
        #: The record version of the last EPOCH record read (0 before the first).
        self.epoch_version = 0
        self.epochs: list[EpochStart] = []
        self.keys: dict[int, _EpochKeys] = {
            ks.epoch: _EpochKeys(AeadKey(ks.record_key), ks.batch, ks.batch_key)
        }
        # A key state from before the file's base (compacted since) cannot be compared
        # by hash; its frames beyond count as units instead.
        self.hash_at_key: bytes | None = None
        if ks.last_seq == header.base_seq - 1:
            self.hash_at_key = header.base_hash
        elif ks.last_seq < header.base_seq - 1:
            self.hash_at_key = ks.last_hash
        self.units_beyond = 0
        self.first_unit_expected = True
        self.in_unit = False

    def check(self, raw: RawFrame) -> tuple[Record | None, bool]:
        """Raise if ``raw`` is not the next good frame.

        Returns the record (opened if our keys reach it) and whether it ends a write unit.
        """
        hdr: Header = parse_header(raw.body)
        if hdr.seq != self.next_seq:
            raise FormatError("sequence break", expected=str(self.next_seq), found=str(hdr.seq))
        ks = self.ks
        beyond = hdr.seq > ks.last_seq
        if beyond and not self.in_unit:
            # The first frame of a write unit after the key state's point. The key
            # state's own keys wrote the first such unit; any later one was written
            # after a key state this file no longer has.
            self.in_unit = True
            if self.units_beyond == 0:
                self.first_unit_expected = (
                    hdr.epoch == ks.epoch + 1
                    if hdr.type == RecordType.EPOCH
                    else hdr.epoch == ks.epoch and hdr.batch == ks.batch
                )
        if hdr.type == RecordType.EPOCH:
            self._epoch(raw, hdr, beyond)
            self.in_unit = False
            return None, True
        keys = self.keys.get(hdr.epoch)
        record = None
        if keys is not None and keys.record is not None:
            record = open_record(raw.body, hdr, keys.record)
        elif hdr.epoch >= ks.epoch or beyond:
            raise FormatError(
                "record in an epoch with no EPOCH record",
                expected="an EPOCH record first",
                found=f"epoch {hdr.epoch}",
            )
        if not beyond:
            return record, True
        # After the key state's point the batch seal must verify with the batch key.
        assert keys is not None and keys.batch_key is not None
        if hdr.version not in BATCHED_VERSIONS or hdr.batch < keys.batch:
            raise FormatError(
                "record after the key state's point is out of its batch order",
                expected=f"version {VERSION_2} or {VERSION}, batch {keys.batch} or later",
                found=f"version {hdr.version}, batch {hdr.batch}",
            )
        if hdr.batch > keys.batch:
            keys.batch_key = next_batch_key(keys.batch_key, hdr.batch - keys.batch)
            keys.batch = hdr.batch
        if not hdr.flags:
            return record, False
        covered, tag = unsealed_frame(raw.data)
        if not constant_time_equal(batch_seal(keys.batch_key, self.head, covered), tag):
            raise FormatError(
                "batch seal does not verify",
                expected=f"the seal of batch {hdr.batch}",
                found="another value",
            )
        keys.batch += 1
        keys.batch_key = next_batch_key(keys.batch_key)
        self.in_unit = False
        return record, True

    def _epoch(self, raw: RawFrame, hdr: Header, beyond: bool) -> None:
        ks = self.ks
        ep = parse_epoch(raw.body, hdr)
        if hdr.epoch > ks.epoch:
            if hdr.epoch - ks.epoch - 1 > MAX_RATCHET_STEPS:
                raise FormatError(
                    "epoch too far ahead of the key state",
                    expected=f"at most {MAX_RATCHET_STEPS} epochs after {ks.epoch}",
                    found=f"epoch {hdr.epoch}",
                )
            ck = ratchet(ks.next_epoch_key, hdr.epoch - ks.epoch - 1)
            if beyond:
                self._check_epoch_seal(raw, hdr, ck, ep.plain.salt, ep.seal)
            self.keys[hdr.epoch] = _EpochKeys(
                record_key(ck, ep.plain.salt), 0, batch_root(ck, ep.plain.salt)
            )
        elif beyond:
            raise FormatError(
                "EPOCH record after the key state's point is not newer than it",
                expected=f"an epoch after {ks.epoch}",
                found=f"epoch {hdr.epoch}",
            )
        self.epochs.append(EpochStart(hdr.seq, raw.offset, self.head))
        self.last_epoch = hdr.epoch
        self.epoch_version = hdr.version

    def _check_epoch_seal(
        self, raw: RawFrame, hdr: Header, chain_key: bytes, salt: bytes, seal: bytes
    ) -> None:
        """An EPOCH record after the key state's point must be whole (ADR 0030).

        Only a record of version 3 can be checked: a version 2 one is taken as it is
        while the file's epochs are of version 2 (the last roll of a writer from before
        version 3), never after a version 3 epoch.
        """
        if hdr.version == VERSION_2 and self.epoch_version <= VERSION_2:
            return
        if hdr.version != VERSION:
            raise FormatError(
                "EPOCH record after the key state's point has an old record version",
                expected=f"version {VERSION} (the file's epochs are of version "
                f"{self.epoch_version})",
                found=f"version {hdr.version}",
            )
        expected = epoch_seal(chain_key, salt, self.head, unsealed_epoch_frame(raw.data))
        if not constant_time_equal(expected, seal):
            raise FormatError(
                "epoch seal does not verify",
                expected=f"the seal of the EPOCH record of epoch {hdr.epoch}",
                found="another value (the record was not written whole)",
            )

    def accept(self, raw: RawFrame) -> None:
        self.head = chain(self.head, raw.data)
        if self.next_seq == self.ks.last_seq:
            self.hash_at_key = self.head
        self.next_seq += 1


def scan(
    fd: int,
    ks: KeyState,
    replay_after: int | None = None,
    *,
    fold: EpochFold | None = None,
) -> Scan:
    """Walk the ledger file; authenticate what our keys reach; find where it stops being good.

    With ``fold``, every good record of the epochs the keys open is streamed into it
    (the fold that rebuilds the server's state; the last epoch's is what remains). Like
    the replayed records, a write unit reaches the fold only once it is whole: a torn
    tail unit is cut, so nothing of it may count.
    """
    with os.fdopen(os.dup(fd), "rb") as stream:
        header = FileHeader.unpack(stream.read(FILE_HEADER_LEN))
        walk = _Walk(header, ks)
        replayed: list[Record] = []
        pending: list[Record] = []
        fold_pending: list[Record | int] = []
        after_epoch, unit_state_only = False, True
        problem: str | None = None
        # The last whole point: where a torn or unsealed tail unit would be cut.
        good = (FILE_HEADER_LEN, header.base_seq, header.base_hash, -1, 0, walk.hash_at_key)
        for raw in FrameReader(stream, start_offset=FILE_HEADER_LEN):
            try:
                record, ends_unit = walk.check(raw)
            except MeterboxError as exc:
                problem = f"at offset {raw.offset}: {exc.problem}"
                break
            beyond = walk.next_seq > ks.last_seq
            walk.accept(raw)
            if record is None:
                opened_epoch = walk.epochs[-1].offset == raw.offset if walk.epochs else False
                if fold is not None and opened_epoch and walk.last_epoch in walk.keys:
                    fold_pending.append(walk.epochs[-1].seq)
            else:
                if fold is not None:
                    fold_pending.append(record)
                if replay_after is not None and record.seq > replay_after:
                    pending.append(record)
            if record is not None and record.type != RecordType.STATE:
                unit_state_only = False
            if ends_unit:
                # An epoch's STATE run is written in the same write as its EPOCH record
                # (ADR 0014): the two units count as the one write they were.
                joins_epoch = record is not None and unit_state_only and after_epoch
                if beyond and not joins_epoch:
                    walk.units_beyond += 1
                after_epoch, unit_state_only = record is None, True
                replayed.extend(pending)
                pending = []
                if fold is not None:
                    for item in fold_pending:
                        if isinstance(item, int):
                            fold.epoch(item)
                        else:
                            fold.record(item)
                    fold_pending = []
                good = (
                    raw.offset + len(raw.data),
                    walk.next_seq,
                    walk.head,
                    walk.last_epoch,
                    len(walk.epochs),
                    walk.hash_at_key,
                )
        end, next_seq, head, last_epoch, n_epochs, hash_at_key = good
        if last_epoch < 0:
            raise StateError(
                "ledger file has no epoch record",
                expected="an EPOCH record at the start of the ledger",
                found="none",
            )
        if last_epoch > ks.epoch:
            next_key = ratchet(ks.next_epoch_key, last_epoch - ks.epoch)
        else:
            next_key = ks.next_epoch_key
        return Scan(
            header,
            end,
            next_seq,
            head,
            last_epoch,
            walk.epochs[:n_epochs],
            problem,
            replayed,
            hash_at_key,
            walk.units_beyond,
            walk.first_unit_expected,
            next_key,
        )


def shortened(found: Scan, ks: KeyState) -> Shortened | None:
    """Whether the ledger (after any torn tail is cut) falls short of its key state."""
    last_seq = found.next_seq - 1
    reason: str | None = None
    if last_seq < ks.last_seq:
        reason = "shorter"
    elif found.hash_at_key is None or not constant_time_equal(found.hash_at_key, ks.last_hash):
        reason = "diverged"
    elif found.units_beyond > 1 or (found.units_beyond == 1 and not found.first_unit_expected):
        reason = "key_behind"
    if reason is None:
        return None
    return Shortened(reason, ks, last_seq, found.head_hash)


def torn_tail(
    scan_result: Scan,
    file_size: int,
    max_torn_bytes: int,
    force: bool,
    acked_seq: int | None = None,
    committed: tuple[int, int] | None = None,
) -> Recovery | None:
    """What to cut after the last good frame, or refuse when it is more than a torn write.

    ``acked_seq`` is the highest seq the server had acknowledged as far as its state
    knows; the result says how many acknowledged records the cut would remove.
    ``committed`` is the key state's point and epoch: a cut that would reach back past the
    start of that epoch is refused like damage beyond ``max_torn_bytes``.
    """
    if scan_result.good_end >= file_size:
        return None
    cut = file_size - scan_result.good_end
    last_good = scan_result.next_seq - 1
    if cut > max_torn_bytes and not force:
        raise StateError(
            "ledger is damaged before its tail",
            expected=f"at most {max_torn_bytes} unsynced bytes at the end",
            found=f"{cut} bytes after offset {scan_result.good_end} that do not verify"
            + (f" ({scan_result.problem})" if scan_result.problem else ""),
            hint="keep a copy of the directory, then run 'meterbox server run "
            "--force-recover'; the cut is recorded and reported to the vendor",
        )
    if (
        committed is not None
        and last_good < committed[0]
        and scan_result.last_epoch < committed[1]
        and not force
    ):
        # The key state's epoch began after the damage: cutting there would remove
        # whole committed epochs, which no torn write can explain. (Damage inside the
        # key state's epoch is cut as before and recorded twice: RECOVERY, and
        # LEDGER_SHORTENED since the ledger then ends before the key state's point.)
        raise StateError(
            "ledger is damaged before its last committed epoch",
            expected=f"records up to seq {committed[0]} in epoch {committed[1]}, which "
            "the key state names as committed, then at most a torn write",
            found=f"{cut} bytes after seq {last_good} (offset {scan_result.good_end}, "
            f"epoch {scan_result.last_epoch}) that do not verify"
            + (f" ({scan_result.problem})" if scan_result.problem else ""),
            hint="keep a copy of the directory, then run 'meterbox server run "
            "--force-recover'; the cut is recorded and reported to the vendor",
        )
    lost = None if acked_seq is None else max(0, acked_seq - last_good)
    return Recovery(scan_result.good_end, cut, last_good, acked_seq, lost)
