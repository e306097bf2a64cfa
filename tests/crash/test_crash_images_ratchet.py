"""Power-loss images of the per-batch key state: every batch rewrites chain.key in place.

Each batch is written and synced to ledger.mbl, then the next key state goes to the
other slot of chain.key (one pwrite, one fdatasync) and the previous slot is wiped.
Every image the crash model allows must open, verify with no critical finding and
above all never look like an attack: no LEDGER_SHORTENED of any reason after an
honest crash. The sanity tests break the key state's sync (or its write) and must
see the harness find images that do.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

from meterbox.clock import ManualClock
from meterbox.ledger import Appended, LedgerConfig, LedgerWriter, RecordType
from support.crash import check_ledger, report_count
from support.crashmodel import Fault, Recorder, crash_images
from support.ledger import make_ledger, usage


def _ledger(mem_path: Path, config: LedgerConfig | None = None) -> tuple[Path, ManualClock]:
    root = mem_path / "root"
    built = make_ledger(root / "l", config=config)
    built.writer.close()
    return root, built.clock


def _mixed_load(rec: Recorder, writer: LedgerWriter, clock: ManualClock, rounds: int) -> None:
    """Single appends and group-committed batches, interleaved."""
    n = 0
    for _ in range(rounds):
        clock.advance(1000)
        try:
            a = writer.append(RecordType.USAGE, usage(n))
            rec.note(("ack", a.seq, usage(n)["k"]))
        except Exception:
            pass
        n += 1
        futs: list[tuple[Future[Appended], str]] = []
        for _ in range(6):
            futs.append((writer.submit(RecordType.USAGE, usage(n)), usage(n)["k"]))
            n += 1
        for fut, key in futs:
            try:
                rec.note(("ack", fut.result().seq, key))
            except Exception:
                continue


def test_key_state_writes_survive_every_power_loss_image(mem_path: Path) -> None:
    config = LedgerConfig(epoch_max_records=9, checkpoint_every=7)
    root, clock = _ledger(mem_path, config)
    with Recorder(root) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock, config=config)
        _mixed_load(rec, writer, clock, 8)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("key state per batch", report)
    assert report.images >= 300
    assert not report.failures, report.summary()


def _key_state_fails(first: int, count: int, kind: str) -> object:
    """A fault hook: ``count`` writes or syncs of chain.key from the ``first``-th fail."""
    state = {"n": 0}

    def hook(k: str, rel: str, n: int) -> Fault | None:
        if k != kind or not rel.endswith("chain.key"):
            return None
        state["n"] += 1
        if first <= state["n"] < first + count:
            return Fault(short=40 if kind == "write" else None)
        return None

    return hook


def test_a_failing_key_state_write_fails_its_batch_and_nothing_else(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    for kind in ("write", "sync"):
        with Recorder(root, faults=_key_state_fails(4, 3, kind)) as rec:  # type: ignore[arg-type]
            writer = LedgerWriter.open(root / "l", clock=clock)
            _mixed_load(rec, writer, clock, 5)
            writer.close()
        report = crash_images(rec, check_ledger("l"), workdir=mem_path)
        report_count(f"key state {kind} fails", report)
        assert not report.failures, report.summary()


def test_broken_key_state_sync_makes_the_harness_find_stale_key_states(mem_path: Path) -> None:
    root, clock = _ledger(mem_path)
    with Recorder(root, broken_sync_files={"chain.key"}) as rec:
        writer = LedgerWriter.open(root / "l", clock=clock)
        _mixed_load(rec, writer, clock, 3)
        writer.close()
    report = crash_images(rec, check_ledger("l"), workdir=mem_path)
    report_count("sanity: key state sync broken", report)
    # Without its sync the key state can fall batches behind the synced ledger: the
    # images then open as "a saved chain.key was put back", which the checker refuses.
    assert any("key_state_behind" in why for _, why in report.failures), report.summary()
