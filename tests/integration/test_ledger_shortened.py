"""Attacks on the ledger files of a stopped server, against the real writer and verifier.

Each test does what a customer with file access can do between two runs of the server
(cut ``ledger.mbl``, put back a saved ``chain.key``, encrypt a record again with the key
read from the directory), then opens the ledger as the next start would and exports the
report the vendor receives. Every attack must end in a critical finding; the one the key
state cannot see (a saved key state put back together with a ledger cut to the very same
point) is pinned as the documented limit.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from meterbox.errors import StateError
from meterbox.ledger import LedgerConfig, LedgerWriter, RecordType, ReportResult, export_report
from meterbox.ledger import _findings as F
from meterbox.ledger._format import FILE_HEADER_LEN
from meterbox.ledger._keystate import read as read_key_state
from support.ledger import Built, make_ledger, reseal_with_key_state, usage, verify
from support.report_surgery import Parts, join, split


def _frame_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    out, pos = [], FILE_HEADER_LEN
    while pos < len(data):
        out.append(pos)
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    return out


def _cut_at_frame(path: Path, index: int) -> None:
    """Truncate ``path`` at the start of its ``index``-th frame (negative: from the end)."""
    at = _frame_offsets(path)[index]
    with path.open("r+b") as fh:
        fh.truncate(at)


def _ledger(tmp_path: Path, n: int = 12, config: LedgerConfig | None = None) -> Built:
    built = make_ledger(tmp_path / "l", config=config)
    for i in range(n):
        built.clock.advance(1000)
        built.writer.append(RecordType.USAGE, usage(i))
    return built


def _reopen_and_report(built: Built) -> tuple[LedgerWriter, ReportResult]:
    writer = LedgerWriter.open(built.directory, clock=built.clock)
    buf = io.BytesIO()
    export_report(writer, buf, clock=built.clock, licenses=[b"lic"], acked=None)
    return writer, verify(buf.getvalue())


def test_a_ledger_cut_at_a_frame_boundary_is_noticed_at_open(tmp_path: Path) -> None:
    built = _ledger(tmp_path)
    built.writer.close()
    before = read_key_state(built.directory, "chain.key")
    # Remove the last four records (SHUTDOWN and three USAGE records), cleanly at a
    # frame boundary: no torn bytes, nothing a crash would leave.
    _cut_at_frame(built.directory / "ledger.mbl", -4)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is not None
        assert writer.shortened.reason == "shorter"
        assert writer.shortened.key.last_seq == before.last_seq
        assert writer.shortened.ledger_seq == before.last_seq - 4
        assert writer.recovery is None  # nothing torn: the cut was not a crash
        assert F.LEDGER_SHORTENED in result.codes
        assert result.critical
        # The server goes on from what the ledger proves: the next record follows the
        # cut ledger's head, in a new epoch.
        appended = writer.append(RecordType.USAGE, usage(99))
        assert appended.seq > before.last_seq - 4
    finally:
        writer.close()


def test_the_shortened_record_stays_in_the_ledger_across_later_restarts(tmp_path: Path) -> None:
    built = _ledger(tmp_path, n=6)
    built.writer.close()
    _cut_at_frame(built.directory / "ledger.mbl", -2)
    LedgerWriter.open(built.directory, clock=built.clock).close()
    # A second clean restart finds nothing new; the evidence of the first stays.
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is None
        assert [f.code for f in result.findings if f.code == F.LEDGER_SHORTENED] == [
            F.LEDGER_SHORTENED
        ]
    finally:
        writer.close()


def test_a_cut_inside_the_current_epoch_of_a_running_ledger_is_noticed(tmp_path: Path) -> None:
    # Many small batches in one epoch: the cut removes records of the current epoch
    # only, which the old per-epoch key could not tell from a ledger that ended there.
    built = _ledger(tmp_path, n=40, config=LedgerConfig(epoch_max_records=1000))
    epoch = built.writer.epoch
    built.writer.close()
    _cut_at_frame(built.directory / "ledger.mbl", -15)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is not None and writer.shortened.key.epoch == epoch
        assert F.LEDGER_SHORTENED in result.codes
    finally:
        writer.close()


def test_a_saved_key_state_put_back_is_noticed(tmp_path: Path) -> None:
    built = _ledger(tmp_path, n=3)
    saved = (built.directory / "chain.key").read_bytes()
    for i in range(3, 9):
        built.writer.append(RecordType.USAGE, usage(i))
    built.writer.close()
    (built.directory / "chain.key").write_bytes(saved)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is not None and writer.shortened.reason == "key_behind"
        assert F.LEDGER_KEY_STATE_BEHIND in result.codes
        assert result.critical
    finally:
        writer.close()


def test_a_saved_key_state_put_back_then_a_cut_across_restarts_is_noticed(
    tmp_path: Path,
) -> None:
    # The attack of the old format: save chain.key, let the server run (restarts
    # included), then put the copy back and cut the tail to where the attacker likes.
    built = _ledger(tmp_path, n=3)
    saved = (built.directory / "chain.key").read_bytes()
    for i in range(3, 10):
        built.writer.append(RecordType.USAGE, usage(i))
    built.writer.close()
    for round_ in range(2):
        w = LedgerWriter.open(built.directory, clock=built.clock)
        for i in range(5):
            w.append(RecordType.USAGE, usage(100 * round_ + i))
        w.close()
    (built.directory / "chain.key").write_bytes(saved)
    _cut_at_frame(built.directory / "ledger.mbl", -12)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is not None
        assert result.codes & {F.LEDGER_KEY_STATE_BEHIND, F.LEDGER_SHORTENED}
        assert result.critical
    finally:
        writer.close()


def test_a_saved_key_state_with_a_cut_to_the_same_point_is_out_of_reach(tmp_path: Path) -> None:
    # The documented limit (docs/adr/0021-per-batch-ratchet.md): the customer keeps a
    # copy of chain.key and puts it back together with a ledger cut to exactly the
    # point that copy names. Files then look like a server stopped at that point; only
    # a witness outside the server (a receipt, a client's head, a TPM counter) can tell.
    built = _ledger(tmp_path, n=4)
    saved = (built.directory / "chain.key").read_bytes()
    saved_len = (built.directory / "ledger.mbl").stat().st_size
    for i in range(4, 10):
        built.writer.append(RecordType.USAGE, usage(i))
    built.writer.close()
    (built.directory / "chain.key").write_bytes(saved)
    with (built.directory / "ledger.mbl").open("r+b") as fh:
        fh.truncate(saved_len)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is None
        assert not result.critical
    finally:
        writer.close()


def test_records_sealed_again_with_the_key_read_at_attack_time_are_rejected(
    tmp_path: Path,
) -> None:
    built = _ledger(tmp_path, n=8)
    buf = io.BytesIO()
    export_report(built.writer, buf, clock=built.clock, licenses=[b"lic"], acked=None)
    parts = split(buf.getvalue())
    # Every USAGE record of the current epoch, encrypted again with amount 0 using the
    # record key chain.key holds right now, and the report signed again with
    # instance.key: all a customer with the data directory has.
    forged = [
        reseal_with_key_state(
            frame, built.directory, {"m": "solver", "a": 0, "c": "client-0", "k": "x"}
        )
        if i >= 3
        else frame
        for i, frame in enumerate(parts.frames)
    ]
    result = verify(join(Parts(parts.header, forged, parts.trailer), built.writer.instance_key))
    built.writer.close()
    # The encryption itself checks out (the record key is the server's own) ...
    assert F.RECORD_UNAUTHENTIC not in result.codes
    # ... but every batch's seal needs a key the key state no longer holds.
    assert F.BATCH_FORGED in result.codes
    assert result.critical


def test_the_key_state_no_longer_holds_the_key_of_any_committed_batch(tmp_path: Path) -> None:
    from meterbox.ledger._keys import next_batch_key

    built = _ledger(tmp_path, n=3)
    first = read_key_state(built.directory, "chain.key")
    built.writer.append(RecordType.USAGE, usage(3))
    second = read_key_state(built.directory, "chain.key")
    built.writer.close()
    assert second.batch == first.batch + 1
    assert second.batch_key == next_batch_key(first.batch_key)
    # The file holds one valid slot: the other was wiped once the new one was durable.
    raw = (built.directory / "chain.key").read_bytes()
    assert first.batch_key not in raw
    assert raw.count(b"MBKS") == 1


def test_damage_in_an_earlier_epoch_than_the_key_states_is_refused(tmp_path: Path) -> None:
    built = _ledger(tmp_path, n=10)
    built.writer.close()
    LedgerWriter.open(built.directory, clock=built.clock).close()  # key state: epoch 1+
    path = built.directory / "ledger.mbl"
    offsets = _frame_offsets(path)
    data = bytearray(path.read_bytes())
    data[offsets[5]] ^= 0x80  # an epoch 0 frame's length now runs past the end
    path.write_bytes(bytes(data))
    copy = tmp_path / "copy"
    shutil.copytree(built.directory, copy)
    with pytest.raises(StateError, match="damaged before its last committed epoch"):
        LedgerWriter.open(built.directory, clock=built.clock)
    assert path.read_bytes() == (copy / "ledger.mbl").read_bytes()
    # The operator may still force it; the cut and the shortening are both recorded.
    writer = LedgerWriter.open(built.directory, clock=built.clock, force_recover=True)
    buf = io.BytesIO()
    export_report(writer, buf, clock=built.clock, licenses=[b"lic"], acked=None)
    writer.close()
    result = verify(buf.getvalue())
    assert {F.LEDGER_RECOVERED, F.LEDGER_SHORTENED} <= result.codes


def test_a_committed_batch_torn_by_a_cut_is_recorded_as_cut_and_shortened(
    tmp_path: Path,
) -> None:
    # Cutting inside a committed frame of the current epoch (not at a boundary) is
    # cut like a torn tail, but it is not one: the ledger ends before the key state.
    built = _ledger(tmp_path, n=6)
    built.writer.close()
    path = built.directory / "ledger.mbl"
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size - 40)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.recovery is not None
        assert writer.shortened is not None and writer.shortened.reason == "shorter"
        assert {F.LEDGER_RECOVERED, F.LEDGER_SHORTENED} <= result.codes
        assert result.critical
    finally:
        writer.close()


@pytest.mark.parametrize("torn", [False, True], ids=["whole", "torn"])
def test_a_batch_written_before_its_key_state_is_a_crash_not_a_shortening(
    tmp_path: Path, torn: bool
) -> None:
    # What a crash between the batch's fdatasync and the key state's write leaves: the
    # batch in ledger.mbl (whole, or torn if power failed mid-write) and the previous
    # key state in chain.key.
    built = _ledger(tmp_path, n=4)
    key_before = (built.directory / "chain.key").read_bytes()
    built.writer.append(RecordType.USAGE, usage(4))
    ledger_after = (built.directory / "ledger.mbl").read_bytes()
    built.writer.close()
    (built.directory / "chain.key").write_bytes(key_before)
    (built.directory / "ledger.mbl").write_bytes(ledger_after[:-7] if torn else ledger_after)
    writer, result = _reopen_and_report(built)
    try:
        assert writer.shortened is None
        assert (writer.recovery is not None) is torn
        assert not result.critical, result.findings
    finally:
        writer.close()
