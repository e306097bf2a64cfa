"""A torn EPOCH record: record version 3's epoch seal lets the server cut it (ADR 0030).

A power loss during an epoch roll can leave the EPOCH record's length on disk with its
last sector zero-filled or old, and (with a folder) the STATE run written with it whole
after it. The recovery scan checks the epoch seal under the chain key its key state
ratchets to, so it cuts that write instead of handing the vendor an EPOCH record that
does not open. A whole EPOCH record after the key state's point (a crash between the
roll's write and its key state write) is kept. A directory of record version 2 still
opens and continues in version 3.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.clock import ManualClock
from meterbox.crypto import x25519_public_from_raw
from meterbox.errors import FormatError
from meterbox.ledger import LedgerWriter, RecordType
from meterbox.ledger import findings as F
from meterbox.ledger._directory import CHAIN_KEY_FILE, LEDGER_FILE, Meta
from meterbox.ledger._format import (
    EPOCH_BODY_LEN,
    EPOCH_BODY_V2_LEN,
    EPOCH_PLAIN,
    EPOCH_SEAL_LEN,
    HEADER_V2,
    VERSION,
    VERSION_2,
    EpochPlain,
    Header,
)
from meterbox.ledger._frames import parse_epoch, parse_header
from meterbox.ledger._keys import seal_chain_key
from meterbox.ledger._keystate import parse as parse_key_state
from meterbox.ledger._keystate import read as read_key_state
from meterbox.ledger._recovery import scan
from meterbox.server._core.ledgerstate import LedgerState
from support.ledger import Built, add_usage, export, make_ledger, usage, verify

V2_SITE = Path(__file__).resolve().parent.parent / "vectors" / "ledger" / "v2" / "site"
EPOCH_FRAME_LEN = 2 + EPOCH_BODY_LEN


@dataclass
class Roll:
    """A ledger stopped cleanly, and the bytes the next open's epoch roll wrote."""

    directory: Path
    clock: ManualClock
    #: The ledger file and key state before that open.
    ledger: bytes
    chain_key: bytes
    #: The roll's write: the EPOCH frame, then the STATE run when folded.
    write: bytes
    acked_seq: int


def _roll(tmp_path: Path, *, folded: bool) -> Roll:
    built = make_ledger(tmp_path / "l")
    built.writer.close()
    folder = LedgerState() if folded else None
    writer = LedgerWriter.open(built.directory, clock=built.clock, folder=folder)
    built.writer = writer
    add_usage(built, 4)
    acked = writer.head.seq
    writer.close()
    ledger_path = built.directory / LEDGER_FILE
    before = ledger_path.read_bytes()
    key = (built.directory / CHAIN_KEY_FILE).read_bytes()
    folder = LedgerState() if folded else None
    LedgerWriter.open(built.directory, clock=built.clock, folder=folder).close()
    after = ledger_path.read_bytes()
    end = len(before) + EPOCH_FRAME_LEN
    while after[end + 3] == RecordType.STATE:
        end += 2 + int.from_bytes(after[end : end + 2], "big")
    return Roll(built.directory, built.clock, before, key, after[len(before) : end], acked)


def _crash_during_roll(roll: Roll, on_disk: bytes) -> None:
    """Put the directory back as a power loss during the roll's write leaves it: the
    key state not yet moved on, the ledger ending in ``on_disk``."""
    (roll.directory / CHAIN_KEY_FILE).write_bytes(roll.chain_key)
    (roll.directory / LEDGER_FILE).write_bytes(roll.ledger + on_disk)


@pytest.mark.parametrize("folded", [False, True], ids=["epoch-alone", "epoch-and-state"])
@pytest.mark.parametrize("damage", ["seal-zeroed", "last-sector-zeroed", "hpke-byte"])
def test_a_torn_epoch_record_is_cut_with_its_state_run_and_recorded(
    tmp_path: Path, folded: bool, damage: str
) -> None:
    roll = _roll(tmp_path, folded=folded)
    torn = bytearray(roll.write)
    if damage == "seal-zeroed":
        torn[EPOCH_FRAME_LEN - EPOCH_SEAL_LEN : EPOCH_FRAME_LEN] = bytes(EPOCH_SEAL_LEN)
    elif damage == "last-sector-zeroed":
        # A sector boundary 100 bytes into the frame: everything of the write after it
        # is zeros (the file's size reached the disk before its data).
        torn[100:] = bytes(len(torn) - 100)
    else:
        torn[2 + 35 + 56 + 40] ^= 0x01  # in the HPKE ciphertext: only the vendor could tell
    _crash_during_roll(roll, bytes(torn))
    key_epoch = read_key_state(roll.directory, CHAIN_KEY_FILE).epoch

    writer = LedgerWriter.open(roll.directory, clock=roll.clock, replay_after=roll.acked_seq)
    try:
        cut = writer.recovery
        assert cut is not None
        # The whole write is cut, EPOCH record and STATE run, and nothing before it.
        assert (cut.cut_offset, cut.cut_bytes) == (len(roll.ledger), len(torn))
        assert cut.last_good_seq == roll.acked_seq + 1  # the SHUTDOWN of the last run
        assert (cut.acked_seq, cut.acked_lost) == (roll.acked_seq, 0)
        assert writer.shortened is None
        # The epoch number the torn roll wanted is rolled again, with a new salt.
        assert writer.epoch == key_epoch + 1
        result = verify(export(Built(writer, roll.clock, roll.directory)))
    finally:
        writer.close()
    assert [(f.code, f.severity) for f in result.findings] == [(F.LEDGER_RECOVERED, "warning")]


@pytest.mark.parametrize("folded", [False, True], ids=["epoch-alone", "epoch-and-state"])
def test_a_whole_epoch_record_after_the_key_states_point_is_kept(
    tmp_path: Path, folded: bool
) -> None:
    """A crash after the roll's write was synced but before the key state moved on."""
    roll = _roll(tmp_path, folded=folded)
    _crash_during_roll(roll, roll.write)
    key_epoch = read_key_state(roll.directory, CHAIN_KEY_FILE).epoch
    writer = LedgerWriter.open(roll.directory, clock=roll.clock, replay_after=roll.acked_seq)
    try:
        assert writer.recovery is None and writer.shortened is None
        assert writer.epoch == key_epoch + 2  # the kept epoch is followed by a new one
        result = verify(export(Built(writer, roll.clock, roll.directory)))
    finally:
        writer.close()
    assert result.findings == []


def _v2_epoch_frame(directory: Path, seq: int, prev_epoch: int) -> bytes:
    """A version 2 EPOCH record for the next place, as the version 2 writer sealed one
    (no epoch seal), with the chain key the directory's key state holds."""
    meta = Meta.read(directory)
    ks = read_key_state(directory, CHAIN_KEY_FILE)
    header = HEADER_V2.pack(VERSION_2, RecordType.EPOCH, prev_epoch + 1, 0, 0, seq, 1, 1)
    plain = EpochPlain(meta.instance_id, b"\x05" * 16, meta.vendor_key_id, b"\x06" * 16)
    bound = header + plain.pack()
    body = bound + seal_chain_key(
        x25519_public_from_raw(meta.vendor_ledger_key), ks.next_epoch_key, bound
    )
    assert len(body) == EPOCH_BODY_V2_LEN
    return struct.pack(">H", len(body)) + body


def test_a_version_2_epoch_record_after_a_version_3_epoch_is_cut(tmp_path: Path) -> None:
    """A version 2 EPOCH record cannot be checked, so after the key state's point it is
    taken only while the file's epochs are of version 2; a version 3 writer never
    writes one, so here it is a tail that does not verify."""
    roll = _roll(tmp_path, folded=False)
    ks = read_key_state(roll.directory, CHAIN_KEY_FILE)
    frame = _v2_epoch_frame(roll.directory, ks.last_seq + 1, ks.epoch)
    _crash_during_roll(roll, frame)
    writer = LedgerWriter.open(roll.directory, clock=roll.clock)
    try:
        assert writer.recovery is not None
        assert (writer.recovery.cut_offset, writer.recovery.cut_bytes) == (
            len(roll.ledger),
            len(frame),
        )
        assert writer.shortened is None
    finally:
        writer.close()


def _v2_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    shutil.copytree(V2_SITE, site)
    os.chmod(site, 0o700)
    for f in site.iterdir():
        os.chmod(f, 0o600)
    return site


def test_a_version_2_directory_opens_and_continues_in_version_3(tmp_path: Path) -> None:
    site = _v2_site(tmp_path)
    old = (site / LEDGER_FILE).read_bytes()
    clock = ManualClock(wall_ms=1_767_300_000_000)
    writer = LedgerWriter.open(site, clock=clock, folder=LedgerState())
    try:
        assert writer.recovery is None and writer.shortened is None
        assert writer.fold_origin == "state"
        for i in range(3):
            clock.advance(1000)
            writer.append(RecordType.USAGE, usage(i))
        report = export(Built(writer, clock, site))
    finally:
        writer.close()
    data = (site / LEDGER_FILE).read_bytes()
    assert data.startswith(old)  # nothing of the version 2 ledger was cut or changed
    result = verify(report)
    assert result.findings == []
    versions = _frame_versions(data)
    assert set(versions[: _frame_count(old)]) == {VERSION_2}
    assert set(versions[_frame_count(old) :]) == {VERSION}


def test_a_version_2_directory_keeps_its_last_epoch_record_written_before_a_crash(
    tmp_path: Path,
) -> None:
    """The old writer's last roll, synced but not yet in its key state, is still taken."""
    site = _v2_site(tmp_path)
    ks = read_key_state(site, CHAIN_KEY_FILE)
    old = (site / LEDGER_FILE).read_bytes()
    clock = ManualClock(wall_ms=1_767_300_000_000)
    frame = _v2_epoch_frame(site, ks.last_seq + 1, ks.epoch)
    (site / LEDGER_FILE).write_bytes(old + frame)
    writer = LedgerWriter.open(site, clock=clock)
    try:
        assert writer.recovery is None and writer.shortened is None
        assert writer.epoch == ks.epoch + 2
        report = export(Built(writer, clock, site))
    finally:
        writer.close()
    assert verify(report).findings == []


def _frames(data: bytes) -> list[bytes]:
    out, pos = [], 61
    while pos < len(data):
        n = 2 + int.from_bytes(data[pos : pos + 2], "big")
        out.append(data[pos : pos + n])
        pos += n
    return out


def _frame_versions(data: bytes) -> list[int]:
    return [f[2] for f in _frames(data)]


def _frame_count(data: bytes) -> int:
    return len(_frames(data))


# ------------------------------------------------------------- properties
@pytest.fixture(scope="module")
def sealed_roll(tmp_path_factory: pytest.TempPathFactory) -> Roll:
    return _roll(tmp_path_factory.mktemp("roll"), folded=True)


@settings(max_examples=120, deadline=None)
@given(pos=st.integers(min_value=0, max_value=EPOCH_FRAME_LEN - 1), xor=st.integers(1, 255))
def test_any_changed_byte_of_the_epoch_frame_makes_the_scan_stop_before_it(
    sealed_roll: Roll, tmp_path_factory: pytest.TempPathFactory, pos: int, xor: int
) -> None:
    """Whatever byte of the tail EPOCH frame a power loss changed, the scan keeps only
    what came before it (the scan reads the file; it writes nothing)."""
    roll = sealed_roll
    torn = bytearray(roll.write)
    torn[pos] ^= xor
    path = tmp_path_factory.mktemp("scan") / "ledger.mbl"
    path.write_bytes(roll.ledger + bytes(torn))
    # The key state as it was before the roll (the directory's has moved on since).
    ks = parse_key_state(roll.chain_key, path)[0]
    fd = os.open(path, os.O_RDONLY)
    try:
        found = scan(fd, ks)
    finally:
        os.close(fd)
    assert found.good_end == len(roll.ledger)
    assert found.next_seq == ks.last_seq + 1


@settings(max_examples=200, deadline=None)
@given(
    epoch=st.integers(0, 2**32 - 1),
    seq=st.integers(0, 2**63 - 1),
    wall=st.integers(-(2**63), 2**63 - 1),
    mono=st.integers(0, 2**64 - 1),
    fields=st.binary(min_size=EPOCH_PLAIN.size, max_size=EPOCH_PLAIN.size),
    sealed=st.binary(min_size=80, max_size=80),
    seal=st.binary(min_size=EPOCH_SEAL_LEN, max_size=EPOCH_SEAL_LEN),
)
def test_a_version_3_epoch_body_parses_back_to_its_fields(
    epoch: int, seq: int, wall: int, mono: int, fields: bytes, sealed: bytes, seal: bytes
) -> None:
    header = Header(VERSION, RecordType.EPOCH, epoch, seq, wall, mono)
    body = header.pack() + fields + sealed + seal
    assert len(body) == EPOCH_BODY_LEN
    hdr = parse_header(body)
    assert hdr == header
    ep = parse_epoch(body, hdr)
    assert ep.plain == EpochPlain.unpack(fields)
    assert (ep.bound, ep.sealed, ep.seal) == (header.pack() + fields, sealed, seal)


@settings(max_examples=100, deadline=None)
@given(length=st.integers(35, 400).filter(lambda n: n != EPOCH_BODY_LEN))
def test_a_version_3_epoch_body_of_another_length_is_refused(length: int) -> None:
    header = Header(VERSION, RecordType.EPOCH, 1, 2, 3, 4)
    body = (header.pack() + bytes(length))[:length]
    with pytest.raises(FormatError) as caught:
        parse_epoch(body, parse_header(body))
    assert caught.value.expected == f"{EPOCH_BODY_LEN} bytes for record version 3"
