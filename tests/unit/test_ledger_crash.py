"""Crash safety: acknowledged records survive kill -9; a torn tail is cut and recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from io import BytesIO
from pathlib import Path

import pytest

from meterbox.clock import ManualClock
from meterbox.errors import StateError
from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier
from meterbox.ledger import findings as F
from support.ledger import VENDOR, VENDOR_ID, add_usage, export, make_ledger, verify


def test_torn_tail_is_cut_and_recorded(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 4)
    head = built.writer.head
    built.writer.close()
    with open(built.directory / "ledger.mbl", "ab") as f:
        f.write(b"\x00\x60" + b"\xaa" * 20)  # a frame whose body never fully reached the disk
    writer = LedgerWriter.open(built.directory, clock=built.clock)
    assert writer.recovery is not None
    assert writer.recovery.cut_bytes == 22
    assert writer.recovery.last_good_seq == head.seq + 1  # the SHUTDOWN record survived
    built.writer = writer
    result = verify(export(built))
    assert F.LEDGER_RECOVERED in result.codes
    assert not result.critical
    writer.close()


def test_garbage_frame_at_tail_is_cut(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 2)
    built.writer.close()
    with open(built.directory / "ledger.mbl", "ab") as f:
        f.write(b"\x00\x30" + b"\x01" * 0x30)  # complete length, content that does not verify
    writer = LedgerWriter.open(built.directory, clock=built.clock)
    assert writer.recovery is not None and writer.recovery.cut_bytes == 0x32
    writer.close()


def test_damage_far_before_the_tail_is_refused_not_cut(tmp_path: Path) -> None:
    from meterbox.ledger import LedgerConfig

    built = make_ledger(tmp_path / "l", config=LedgerConfig(max_torn_bytes=64))
    add_usage(built, 30)
    built.writer.close()
    path = built.directory / "ledger.mbl"
    data = bytearray(path.read_bytes())
    data[400] ^= 0xFF
    path.write_bytes(bytes(data))
    before = path.read_bytes()
    with pytest.raises(StateError, match="damaged before its tail"):
        LedgerWriter.open(
            built.directory, clock=built.clock, config=LedgerConfig(max_torn_bytes=64)
        )
    assert path.read_bytes() == before  # nothing was cut


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from meterbox.clock import SystemClock
    from meterbox.ledger import LedgerWriter, RecordType
    w = LedgerWriter.open(Path(sys.argv[1]), clock=SystemClock())
    i = 0
    while True:
        futs = [w.submit(RecordType.USAGE, {"m": "m", "a": 1, "k": f"{i}-{j}"}) for j in range(50)]
        for f in futs:
            a = f.result()
            sys.stdout.write(f"{a.seq}\\n")
        sys.stdout.flush()
        i += 1
    """
)


def test_acknowledged_records_survive_kill_9_in_twenty_rounds(tmp_path: Path) -> None:
    """SIGKILL at random moments under load; after each restart everything acked is there."""
    import random

    rng = random.Random(20261128)
    built = make_ledger(tmp_path / "l")
    built.writer.close()
    acked_max = -1
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(built.directory)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        target = rng.randint(1, 1500)
        acked: list[int] = []
        for line in proc.stdout:
            acked.append(int(line))
            if len(acked) >= target:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:  # whatever was acknowledged before the kill landed
            if line.strip():
                acked.append(int(line))
        acked_max = max([acked_max, *acked])
        writer = LedgerWriter.open(built.directory, clock=ManualClock())
        assert writer.head.seq > acked_max
        built.writer = writer
        report = verify(export(built))
        assert not report.critical, report.findings
        assert report.head is not None
        assert report.head.seq >= acked_max
        writer.close()


def test_two_writers_on_one_directory_are_refused(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    with pytest.raises(StateError, match="in use by another process"):
        LedgerWriter.open(built.directory, clock=built.clock)
    built.writer.close()


def test_clock_step_is_recorded(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    built.clock.step_wall(-3_600_000)  # the admin sets the clock back an hour
    built.writer.append(RecordType.HEARTBEAT, {})
    seen = []
    from io import BytesIO

    v = ReportVerifier(
        {__import__("support.ledger").ledger.VENDOR_ID: __import__("support.ledger").ledger.VENDOR}
    )
    for record, _ in v.records(BytesIO(export(built))):
        seen.append((record.type, record.payload))
    steps = [p for t, p in seen if t == RecordType.CLOCK_STEP]
    assert steps and steps[0]["d"] == -3_600_000
    built.writer.close()


def test_disk_full_fails_the_batch_and_recovers_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from meterbox.ledger import _writer

    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    real_pwrite = os.pwrite
    full = {"on": True}

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if full["on"]:
            real_pwrite(fd, data[: len(data) // 2], offset)  # a partial write, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(_writer.os, "pwrite", pwrite)
    before = built.writer.head
    with pytest.raises(StateError, match="cannot be written"):
        built.writer.append(RecordType.USAGE, {"m": "solver", "a": 1})
    assert built.writer.head == before  # nothing half-applied
    full["on"] = False
    appended = built.writer.append(RecordType.USAGE, {"m": "solver", "a": 2})
    assert appended.seq == before.seq + 1  # no gap left by the failed batch
    result = verify(export(built))
    assert result.findings == []
    built.writer.close()


def test_a_short_write_is_completed_before_the_batch_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = make_ledger(tmp_path / "l")
    real_pwrite = os.pwrite
    calls: list[int] = []

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        # The kernel may write less than asked without an error (a filling disk,
        # a signal): only the first 7 bytes of each call land.
        calls.append(len(data))
        return real_pwrite(fd, bytes(data[:7]), offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    appended = built.writer.append(RecordType.USAGE, {"m": "solver", "a": 1, "k": "short"})
    monkeypatch.undo()
    assert len(calls) > 1
    built.writer.close()
    writer = LedgerWriter.open(built.directory, clock=built.clock, replay_after=appended.seq)
    assert writer.recovery is None
    built.writer = writer
    records = [r for r, _ in ReportVerifier({VENDOR_ID: VENDOR}).records(BytesIO(export(built)))]
    assert [r.payload["k"] for r in records if r.type == RecordType.USAGE] == ["short"]
    writer.close()


def test_recovery_record_says_no_acknowledged_record_was_cut(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 4)
    acked = built.writer.head
    built.writer.close()
    with open(built.directory / "ledger.mbl", "ab") as f:
        f.write(b"\x00\x60" + b"\xaa" * 20)  # an unsynced, unacknowledged batch, torn
    writer = LedgerWriter.open(built.directory, clock=built.clock, replay_after=acked.seq)
    assert writer.recovery is not None
    assert writer.recovery.acked_lost == 0 and writer.recovery.acked_seq == acked.seq
    built.writer = writer
    result = verify(export(built))
    assert F.LEDGER_RECOVERED in result.codes
    assert F.LEDGER_ACKNOWLEDGED_LOST not in result.codes
    writer.close()


def test_recovery_record_that_cut_acknowledged_records_is_a_critical_finding(
    tmp_path: Path,
) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 4)
    acked = built.writer.head
    built.writer.close()
    # A disk that lost the last acknowledged batch, leaving part of it: the restart
    # must say so rather than pass the cut off as a torn, unacknowledged tail.
    path = built.directory / "ledger.mbl"
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    writer = LedgerWriter.open(built.directory, clock=built.clock, replay_after=acked.seq + 1)
    assert writer.recovery is not None and writer.recovery.acked_lost
    built.writer = writer
    result = verify(export(built))
    assert F.LEDGER_ACKNOWLEDGED_LOST in result.codes
    assert result.critical
    writer.close()
