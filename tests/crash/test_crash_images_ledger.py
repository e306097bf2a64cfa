"""Power-loss images of the ledger: appends, group commit, epoch rolls, compaction.

Each test records a ledger code path, builds every crash image the model allows
(see tests/support/crashmodel.py) and checks each one: it opens, verifies, and holds every
acknowledged record. The sanity test breaks fdatasync and must see losses.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from meterbox.clock import ManualClock
from meterbox.ledger import Appended, LedgerConfig, LedgerWriter, RecordType
from support.crash import check_ledger, report_count
from support.crashmodel import Fault, Recorder, crash_images
from support.ledger import make_ledger, usage


def _appends(
    rec: Recorder, writer: LedgerWriter, clock: ManualClock, n: int, start: int = 0
) -> None:
    for i in range(start, start + n):
        clock.advance(1000)
        try:
            a = writer.append(RecordType.USAGE, usage(i))
        except Exception:
            continue
        rec.note(("ack", a.seq, usage(i)["k"]))


def _ledger(mem_path: Path, config: LedgerConfig | None = None) -> tuple[Path, ManualClock]:
    root = mem_path / "root"
    built = make_ledger(root / "l", config=config)
    built.writer.close()
    return root, built.clock


def test_appends_survive_every_power_loss_image(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    with Recorder(root) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock)
        _appends(rec, writer, clock, 60)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("ledger append", report)
    assert report.images >= 200
    assert not report.failures, report.summary()


def test_group_commit_batches_survive_every_power_loss_image(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    with Recorder(root) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock)
        for round_ in range(16):
            futs: list[tuple[Future[Appended], str]] = []
            for i in range(round_ * 10, round_ * 10 + 10):
                futs.append((writer.submit(RecordType.USAGE, usage(i)), usage(i)["k"]))
            for fut, key in futs:
                rec.note(("ack", fut.result().seq, key))
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("ledger group commit", report)
    assert report.images >= 50
    assert not report.failures, report.summary()


def test_epoch_rolls_survive_every_power_loss_image(mem_path: Path) -> None:
    root, clock = _ledger(mem_path, LedgerConfig(epoch_max_records=4, checkpoint_every=5))
    with Recorder(root) as rec:
        writer = LedgerWriter.open(
            root / "l", clock=clock, config=LedgerConfig(epoch_max_records=4, checkpoint_every=5)
        )
        _appends(rec, writer, clock, 30)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("epoch roll", report)
    assert report.images >= 200
    assert not report.failures, report.summary()


def test_compaction_survives_every_power_loss_image(mem_path: Path) -> None:
    config = LedgerConfig(epoch_max_records=5)
    root, clock = _ledger(mem_path, config)
    writer = LedgerWriter.open(root / "l", clock=clock, config=config)
    for i in range(20):
        clock.advance(1000)
        writer.append(RecordType.USAGE, usage(i))
    acked_head = writer.head
    writer.close()
    with Recorder(root) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock, config=config)
        writer.compact(acked_head)
        rec.note(("compacted", acked_head.seq))
        _appends(rec, writer, clock, 30, start=100)
        writer.close()
    report = crash_images(rec, check_ledger("l", min_seq=acked_head.seq), workdir=mem_path)
    report_count("compaction", report)
    assert report.images >= 100
    assert not report.failures, report.summary()


def test_broken_fdatasync_makes_the_harness_find_losses(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    with Recorder(root, broken_sync={"fdatasync"}) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock)
        _appends(rec, writer, clock, 10)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("sanity: fdatasync broken", report)
    lost = [why for _, why in report.failures if "acknowledged seq" in why]
    assert lost, report.summary()


def _disk_fills_at(write_no: int, short: int) -> object:
    """A fault hook: the ``write_no``-th write to ledger.mbl is short, every later one ENOSPC."""
    state = {"n": 0}

    def hook(kind: str, rel: str, n: int) -> Fault | None:
        if kind != "write" or not rel.endswith("ledger.mbl"):
            return None
        state["n"] += 1
        if state["n"] < write_no:
            return None
        if state["n"] == write_no:
            return Fault(short=short, error=None)
        return Fault()

    return hook


def test_disk_filling_mid_batch_acknowledges_nothing_it_did_not_write(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    with Recorder(root, faults=_disk_fills_at(6, 40)) as rec:  # type: ignore[arg-type]
        writer = LedgerWriter.open(root / "l", clock=clock)
        _appends(rec, writer, clock, 10)
        rec.faults = None  # space returns
        _appends(rec, writer, clock, 10, start=50)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("ledger append, disk fills", report)
    assert not report.failures, report.summary()
