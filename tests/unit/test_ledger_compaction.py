"""Records covered by a receipt can be compacted without breaking later verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterbox.errors import VerificationError
from meterbox.ledger import Head, Known, LedgerConfig, LedgerWriter
from meterbox.ledger import findings as F
from support.ledger import add_usage, export, make_ledger, verify


def test_compaction_keeps_later_reports_verifiable(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l", config=LedgerConfig(epoch_max_records=10))
    add_usage(built, 45)
    first = verify(export(built))
    assert first.findings == []
    removed = built.writer.compact(first.head)  # type: ignore[arg-type]
    assert removed > 0
    add_usage(built, 5)
    known = Known(head=first.head, chain=first.chain, instance_key=first.instance_key)  # type: ignore[arg-type]
    second = verify(export(built), known=known)
    assert second.findings == [], second.findings
    assert second.base_seq > 0
    # The compacted ledger reopens and keeps going.
    built.writer.close()
    built.writer = LedgerWriter.open(built.directory, clock=built.clock)
    add_usage(built, 3)
    assert verify(export(built), known=known).findings == []
    built.writer.close()


def test_compaction_refuses_a_head_from_another_ledger(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 5)
    with pytest.raises(VerificationError, match="does not match this ledger"):
        built.writer.compact(Head(3, b"\x00" * 32))
    built.writer.close()


def test_compacted_report_without_known_state_is_unanchored(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l", config=LedgerConfig(epoch_max_records=5))
    add_usage(built, 20)
    first = verify(export(built))
    built.writer.compact(first.head)  # type: ignore[arg-type]
    result = verify(export(built))
    assert F.LEDGER_UNANCHORED in result.codes
    built.writer.close()
