"""A caller that gives up on a record (its request cancelled) neither loses the record
nor stops the ledger: the committer thread writes it, tells nobody, and goes on."""

from __future__ import annotations

import asyncio
import time
from io import BytesIO
from pathlib import Path

from meterbox.ledger import RecordType, ReportVerifier
from support.ledger import VENDOR, VENDOR_ID, export, make_ledger, usage


def _usage_keys(data: bytes) -> list[str]:
    records = ReportVerifier({VENDOR_ID: VENDOR}).records(BytesIO(data))
    return [str(r.payload["k"]) for r, _ in records if r.type == RecordType.USAGE]


def test_a_record_cancelled_while_queued_is_written_and_the_ledger_goes_on(
    tmp_path: Path,
) -> None:
    built = make_ledger(tmp_path / "l")
    w = built.writer
    first, queued, after = usage(1), usage(2), usage(3)
    with w._io_lock:  # hold the committer at the disk, so the next record stays queued
        a = w.submit(RecordType.USAGE, first)
        deadline = time.monotonic() + 10
        while not a.running():  # taken by the committer, which now waits for the lock
            assert time.monotonic() < deadline, "the committer never took the first record"
            time.sleep(0.01)
        b = w.submit(RecordType.USAGE, queued)
        assert b.cancel()  # as asyncio does when the awaiting request is cancelled
    assert a.result(timeout=10).seq > 0
    # The committer survived the cancelled future: the next record is acknowledged.
    c = w.submit(RecordType.USAGE, after).result(timeout=10)
    assert b.cancelled()
    assert _usage_keys(export(built)) == [first["k"], queued["k"], after["k"]]
    assert c.seq == a.result().seq + 2
    w.close()


def test_an_asyncio_waiter_cancelled_mid_commit_leaves_the_committer_running(
    tmp_path: Path,
) -> None:
    """The path a server request takes: ``asyncio.wrap_future`` cancelled with its task."""
    built = make_ledger(tmp_path / "l")
    w = built.writer

    async def scenario() -> int:
        with w._io_lock:
            blocker = w.submit(RecordType.USAGE, usage(10))
            while not blocker.running():
                await asyncio.sleep(0.01)
            task = asyncio.ensure_future(asyncio.wrap_future(w.submit(RecordType.USAGE, usage(11))))
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.sleep(0.05)
        appended = await asyncio.wait_for(
            asyncio.wrap_future(w.submit(RecordType.USAGE, usage(12))), timeout=10
        )
        return appended.seq

    seq = asyncio.run(scenario())
    assert seq > 0
    assert _usage_keys(export(built)) == [usage(i)["k"] for i in (10, 11, 12)]
    w.close()
