"""A clock outside what the record header holds fails its own record, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import FormatError
from meterbox.ledger import RecordType
from meterbox.ledger._seal import pending
from support.ledger import add_usage, export, make_ledger, usage, verify


def test_monotonic_time_below_zero_fails_that_record_and_the_ledger_goes_on(
    tmp_path: Path,
) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    built.clock._mono = -5  # a broken clock: monotonic time never runs below zero
    with pytest.raises(FormatError) as err:
        built.writer.append(RecordType.USAGE, usage(99))
    assert "monotonic -5 ms" in str(err.value) and "check the host's clock" in str(err.value)
    built.clock._mono = 60_000
    add_usage(built, 2)
    result = verify(export(built))
    assert not result.findings, result.findings
    control = make_ledger(tmp_path / "control")
    add_usage(control, 5)
    assert result.records == verify(export(control)).records  # the refused one is absent


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**70), 2**70), st.integers(-(2**70), 2**70))
def test_any_time_the_header_holds_is_accepted_and_no_other(wall: int, mono: int) -> None:
    fits = -(2**63) <= wall < 2**63 and 0 <= mono < 2**64
    try:
        pending(RecordType.USAGE, usage(1), wall_ms=wall, mono_ms=mono)
    except FormatError:
        assert not fits
    else:
        assert fits
