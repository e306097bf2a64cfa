"""Power-loss images of the ledger: appends, group commit, epoch rolls, compaction.

Each test records a ledger code path under several workloads (record sizes, batch
sizes, epoch sizes, where the disk fills), builds every crash image the model allows
(see tests/support/crashmodel.py) and checks each one: it opens, verifies, and holds
every acknowledged record. Different workloads give different files, so their
images are different images; each path's total is asserted and printed. The sanity
test breaks fdatasync and must see losses.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from meterbox.clock import ManualClock
from meterbox.ledger import Appended, LedgerConfig, LedgerWriter, RecordType
from meterbox.ledger._format import EPOCH_BODY_LEN
from meterbox.server._core.ledgerstate import LedgerState
from support.crash import check_ledger, ledger_records, report_count
from support.crashmodel import (
    CrashPoint,
    Fault,
    FaultHook,
    HarnessReport,
    Recorder,
    crash_images,
)
from support.ledger import make_ledger, usage

#: The acceptance asks for a few hundred distinct images per durable path.
MIN_IMAGES_PER_PATH = 300


def sized(i: int, pad: int) -> dict[str, Any]:
    """A usage record whose payload is ``pad`` bytes longer: larger records put frame
    boundaries at other places relative to the disk's 512-byte sectors."""
    record = usage(i)
    if pad:
        record["c"] = record["c"] + "-" + "x" * pad
    return record


def _appends(
    rec: Recorder,
    writer: LedgerWriter,
    clock: ManualClock,
    n: int,
    start: int = 0,
    pad: int = 0,
) -> None:
    for i in range(start, start + n):
        clock.advance(1000)
        try:
            a = writer.append(RecordType.USAGE, sized(i, pad))
        except Exception:
            continue
        rec.note(("ack", a.seq, usage(i)["k"]))


def _ledger(
    mem_path: Path, name: str, config: LedgerConfig | None = None
) -> tuple[Path, ManualClock]:
    root = mem_path / name
    built = make_ledger(root / "l", config=config)
    built.writer.close()
    return root, built.clock


def _check(
    path: str, workload: str, rec: Recorder, mem_path: Path, min_seq: int = -1
) -> HarnessReport:
    report = crash_images(rec, check_ledger("l", min_seq=min_seq), workdir=mem_path)
    report_count(path, report, workload)
    assert not report.failures, f"{workload}: {report.summary()}"
    return report


def test_appends_survive_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for n, pad in ((60, 0), (24, 700), (8, 3000)):
        root, clock = _ledger(mem_path, f"append-{pad}")
        with Recorder(root) as rec:
            writer = LedgerWriter.open(root / "l", clock=clock)
            _appends(rec, writer, clock, n, pad=pad)
            writer.close()
        images += _check("ledger append", f"{n} records of +{pad} B", rec, mem_path).images
    assert images >= MIN_IMAGES_PER_PATH


def test_group_commit_batches_survive_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for rounds, batch, pad in ((16, 10, 0), (12, 3, 300), (4, 40, 0), (3, 12, 1500)):
        root, clock = _ledger(mem_path, f"group-{batch}-{pad}")
        with Recorder(root) as rec:
            writer = LedgerWriter.open(root / "l", clock=clock)
            for round_ in range(rounds):
                futs: list[tuple[Future[Appended], str]] = []
                for i in range(round_ * batch, round_ * batch + batch):
                    futs.append((writer.submit(RecordType.USAGE, sized(i, pad)), usage(i)["k"]))
                for fut, key in futs:
                    rec.note(("ack", fut.result().seq, key))
            writer.close()
        workload = f"{rounds} batches of {batch} x +{pad} B"
        images += _check("ledger group commit", workload, rec, mem_path).images
    assert images >= MIN_IMAGES_PER_PATH


def test_epoch_rolls_survive_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    for epoch, checkpoint, n, pad in ((4, 5, 30, 0), (2, 3, 20, 200), (9, 4, 28, 900)):
        config = LedgerConfig(epoch_max_records=epoch, checkpoint_every=checkpoint)
        root, clock = _ledger(mem_path, f"epoch-{epoch}", config)
        with Recorder(root) as rec:
            writer = LedgerWriter.open(root / "l", clock=clock, config=config)
            _appends(rec, writer, clock, n, pad=pad)
            writer.close()
        workload = f"epochs of {epoch}, checkpoint every {checkpoint}, +{pad} B"
        images += _check("epoch roll", workload, rec, mem_path).images
    assert images >= MIN_IMAGES_PER_PATH


def test_compaction_survives_every_power_loss_image(mem_path: Path) -> None:
    images = 0
    # (epoch size, records before, records the receipt covers, appends after, pad)
    for epoch, before, covered, after, pad in ((5, 20, 20, 30, 0), (3, 18, 10, 12, 400),
                                              (10, 25, 14, 8, 1200)):  # fmt: skip
        config = LedgerConfig(epoch_max_records=epoch)
        root, clock = _ledger(mem_path, f"compact-{epoch}", config)
        writer = LedgerWriter.open(root / "l", clock=clock, config=config)
        acked_head = writer.head
        for i in range(before):
            clock.advance(1000)
            writer.append(RecordType.USAGE, sized(i, pad))
            if i + 1 == covered:
                acked_head = writer.head
        writer.close()
        with Recorder(root) as rec:
            writer = LedgerWriter.open(root / "l", clock=clock, config=config)
            writer.compact(acked_head)
            rec.note(("compacted", acked_head.seq))
            _appends(rec, writer, clock, after, start=100, pad=pad)
            writer.close()
        workload = f"epochs of {epoch}, {covered}/{before} covered, {after} after, +{pad} B"
        images += _check("compaction", workload, rec, mem_path, min_seq=acked_head.seq).images
    assert images >= MIN_IMAGES_PER_PATH


def test_broken_fdatasync_makes_the_harness_find_losses(mem_path: Path) -> None:
    root, clock = _ledger(mem_path, "sanity")
    with Recorder(root, broken_sync={"fdatasync"}) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock)
        _appends(rec, writer, clock, 10)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("sanity: fdatasync broken", report)
    lost = [why for _, why in report.failures if "acknowledged seq" in why]
    assert lost, report.summary()


def _disk_fills_at(write_no: int, short: int | None, kind: str = "write") -> FaultHook:
    """A fault hook: the ``write_no``-th ``kind`` call on ledger.mbl writes only
    ``short`` bytes (None: fails outright), every later one fails with ENOSPC."""
    state = {"n": 0}

    def hook(what: str, rel: str, n: int) -> Fault | None:
        if what != kind or not rel.endswith("ledger.mbl"):
            return None
        state["n"] += 1
        if state["n"] < write_no:
            return None
        if state["n"] == write_no and short is not None:
            return Fault(short=short, error=None)
        return Fault()

    return hook


def test_disk_filling_mid_batch_acknowledges_nothing_it_did_not_write(mem_path: Path) -> None:
    images = 0
    # (n-th call that fails, bytes it still writes, which call, record pad, batch size)
    for write_no, short, kind, pad, batch in (
        (6, 40, "write", 0, 1),
        (3, 1, "write", 0, 1),
        (4, 700, "write", 900, 1),
        (5, None, "write", 0, 1),
        (4, None, "sync", 0, 1),
        (3, 300, "write", 100, 6),
        (3, None, "sync", 200, 6),
    ):
        root, clock = _ledger(mem_path, f"full-{write_no}-{short}-{kind}-{pad}-{batch}")
        with Recorder(root, faults=_disk_fills_at(write_no, short, kind)) as rec:
            writer = LedgerWriter.open(root / "l", clock=clock)
            refused = _batches(rec, writer, clock, 10, batch, pad)
            rec.faults = None  # space returns
            if _batches(rec, writer, clock, 2, batch, pad, start=40):
                # A truncation that could not be synced stops the writer until a
                # restart (ADR 0010); restart it, as the server would be.
                writer.close()
                writer = LedgerWriter.open(root / "l", clock=clock)
            refused_after = _batches(rec, writer, clock, 6, batch, pad, start=50)
            writer.close()
        assert refused and not refused_after, (refused, refused_after)
        workload = f"{kind} #{write_no} {'short ' + str(short) if short else 'fails'}, " + (
            f"batches of {batch} x +{pad} B"
        )
        images += _check("ledger append, disk fills", workload, rec, mem_path).images
    assert images >= MIN_IMAGES_PER_PATH


def _batches(
    rec: Recorder,
    writer: LedgerWriter,
    clock: ManualClock,
    rounds: int,
    batch: int,
    pad: int,
    start: int = 0,
) -> int:
    """``rounds`` group commits of ``batch`` records; a failed record is not noted.

    Returns how many records were refused."""
    refused = 0
    for r in range(rounds):
        clock.advance(1000)
        base = start + r * batch
        futs = [(writer.submit(RecordType.USAGE, sized(i, pad)), usage(i)["k"])
                for i in range(base, base + batch)]  # fmt: skip
        for fut, key in futs:
            try:
                seq = fut.result().seq
            except Exception:
                refused += 1
                continue
            rec.note(("ack", seq, key))
    return refused


#: Where a sector boundary falls inside the roll's EPOCH frame: past its length
#: prefix, in its HPKE part, so the frame's length reaches the disk before its end.
_SECTOR = 512
_BOUNDARY_INTO_EPOCH = 100


def _ledger_before_a_sector_boundary(
    mem_path: Path, name: str, folded: bool
) -> tuple[Path, ManualClock, list[tuple[int, str]]]:
    """A closed ledger of three acknowledged records whose end lies
    ``_BOUNDARY_INTO_EPOCH`` bytes before a sector boundary: the next open's EPOCH
    record then straddles it. Returns the root, the clock and the (seq, key) acked.

    The first record is padded until the file ends there (msgpack length headers make
    the size step unevenly, so this measures rather than computes)."""
    target, pad = _SECTOR - _BOUNDARY_INTO_EPOCH, 0
    for attempt in range(8):
        root, clock = _ledger(mem_path, f"{name}-{attempt}")
        residue, acked = _fill(root, clock, folded, pad)
        delta = (target - residue + _SECTOR // 2) % _SECTOR - _SECTOR // 2
        if delta == 0:
            return root, clock, acked
        pad = (pad + delta) % _SECTOR
    raise AssertionError("could not place the epoch roll across a sector boundary")


def _fill(
    root: Path, clock: ManualClock, folded: bool, pad: int
) -> tuple[int, list[tuple[int, str]]]:
    writer = LedgerWriter.open(root / "l", clock=clock, folder=LedgerState() if folded else None)
    acked = []
    for i in range(3):
        clock.advance(1000)
        acked.append((writer.append(RecordType.USAGE, sized(i, pad if i == 0 else 0)).seq,
                      usage(i)["k"]))  # fmt: skip
    writer.close()
    return (root / "l" / "ledger.mbl").stat().st_size % _SECTOR, acked


@pytest.mark.parametrize("folded", [False, True], ids=["epoch-alone", "epoch-and-state"])
def test_a_torn_epoch_record_is_cut_at_recovery_with_what_followed_it(
    mem_path: Path, folded: bool
) -> None:
    """The images of an open's epoch roll, with acknowledged records before it.

    Without a folder the EPOCH record is a write of its own; with one (the server's
    case) its STATE run goes out in the same write. The roll's EPOCH record straddles
    a sector boundary, so some images hold its full length but not its last sector
    (zero-filled, or left as it was). Each of them must be cut at the EPOCH record:
    its epoch seal fails at the restart (ADR 0030). The restart's RECOVERY record
    then says nothing acknowledged was cut, and the vendor sees no critical finding.
    """
    root, clock, acked = _ledger_before_a_sector_boundary(mem_path, "epoch-seal", folded)
    ledger = root / "l" / "ledger.mbl"
    roll_at = ledger.stat().st_size
    with Recorder(root) as rec:
        for seq, key in acked:
            rec.note(("ack", seq, key))
        LedgerWriter.open(root / "l", clock=clock, folder=LedgerState() if folded else None).close()
    epoch_frame = ledger.read_bytes()[roll_at : roll_at + 2 + EPOCH_BODY_LEN]
    assert epoch_frame[3] == RecordType.EPOCH
    damaged: list[str] = []

    def check(image: Path, point: CrashPoint) -> None:
        on_disk = (image / "l" / "ledger.mbl").read_bytes()[roll_at : roll_at + len(epoch_frame)]
        torn = len(on_disk) == len(epoch_frame) and on_disk[:2] == epoch_frame[:2]
        torn = torn and on_disk != epoch_frame
        have, critical, recoveries = ledger_records(image / "l", acked[-1][0])
        for seq, key in acked:
            assert have.get(seq) == key, f"acknowledged seq {seq} is gone"
        assert not critical, critical
        for r in recoveries:
            assert r["a"] == 0 and r["s"] >= r["k"], r
        if torn:
            # The whole write is cut, at the EPOCH record: with a folder, its STATE run
            # goes too. What is kept ends with the SHUTDOWN of the last run.
            cuts = [(r["o"], r["s"]) for r in recoveries]
            assert cuts == [(roll_at, acked[-1][0] + 1)], cuts
            damaged.append(point.variant)

    report = crash_images(rec, check, workdir=mem_path)
    report_count("epoch roll, torn EPOCH record", report, "folded" if folded else "alone")
    assert not report.failures, report.summary()
    assert not report.known, report.summary()
    # The images of the defect exist here, and every one of them was cut (above).
    assert any("zerotail" in v for v in damaged), (damaged, report.summary())
