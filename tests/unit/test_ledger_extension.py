"""Does a later report extend what the vendor acknowledged? Otherwise: rollback or fork."""

from __future__ import annotations

import shutil
from pathlib import Path

from meterbox.ledger import Known, LedgerWriter
from meterbox.ledger import findings as F
from support.ledger import add_usage, export, make_ledger, verify


def _known(result) -> Known:  # type: ignore[no-untyped-def]
    return Known(head=result.head, chain=result.chain, instance_key=result.instance_key)


def test_later_report_extends_the_acknowledged_head(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 5)
    first = verify(export(built))
    add_usage(built, 5)
    second = verify(export(built), known=_known(first))
    assert second.findings == []
    assert second.head.seq > first.head.seq  # type: ignore[union-attr]
    built.writer.close()


def test_rollback_to_a_backup_older_than_the_receipt(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    built.writer.close()
    backup = tmp_path / "backup"
    shutil.copytree(built.directory, backup)
    built.writer = LedgerWriter.open(built.directory, clock=built.clock)
    add_usage(built, 5)
    acked = verify(export(built))
    built.writer.close()
    # The customer restores the backup and keeps going from there.
    restored = LedgerWriter.open(backup, clock=built.clock)
    built.writer = restored
    result = verify(export(built), known=_known(acked))
    assert F.LEDGER_ROLLBACK in result.codes or F.LEDGER_FORK in result.codes
    add_usage(built, 20)
    result = verify(export(built), known=_known(acked))
    assert F.LEDGER_FORK in result.codes
    restored.close()


def test_two_ledgers_are_forks_of_each_other(tmp_path: Path) -> None:
    a = make_ledger(tmp_path / "a", seed=1)
    b = make_ledger(tmp_path / "b", seed=2)
    add_usage(a, 3)
    add_usage(b, 3)
    known_a = _known(verify(export(a)))
    result = verify(export(b), known=known_a)
    assert F.REPORT_INSTANCE_KEY_MISMATCH in result.codes
    assert result.critical
    a.writer.close()
    b.writer.close()


def test_replayed_old_report_is_a_rollback(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    old = export(built)
    add_usage(built, 3)
    newer = verify(export(built))
    assert F.LEDGER_ROLLBACK in verify(old, known=_known(newer)).codes
    built.writer.close()


def test_uncompacted_report_resending_acknowledged_epochs_is_clean(tmp_path: Path) -> None:
    from meterbox.ledger import LedgerConfig

    built = make_ledger(tmp_path / "l", config=LedgerConfig(epoch_max_records=4))
    add_usage(built, 15)  # several epochs
    first = verify(export(built))
    assert first.chain is not None
    assert first.chain.epoch >= 3
    add_usage(built, 5)
    # Not compacted: the report starts again at genesis and resends acknowledged epochs.
    assert verify(export(built), known=_known(first)).findings == []
