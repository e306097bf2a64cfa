"""Every single-byte change, deletion, duplication, reordering and truncation is detected."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.ledger import findings as F
from support.ledger import Built, add_usage, export, make_ledger, verify
from support.report_surgery import frame_offsets, join, split

RECORD_LEVEL = {
    F.RECORD_UNAUTHENTIC,
    F.BATCH_FORGED,
    F.RECORD_MALFORMED,
    F.RECORD_UNKNOWN_VERSION,
    F.EPOCH_UNOPENABLE,
    F.EPOCH_MISSING,
    F.RECORD_MISSING,
    F.RECORD_DUPLICATE,
    F.RECORD_OUT_OF_ORDER,
    F.REPORT_WRONG_VENDOR_KEY,
    F.EPOCH_FOREIGN,
    F.EPOCH_GAP,
    F.EPOCH_FORGED,
}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Built, bytes]:
    built = make_ledger(tmp_path_factory.mktemp("tamper") / "ledger")
    add_usage(built, 6)
    data = export(built)
    built.writer.close()
    return built, data


def test_clean_report_has_no_findings(sample: tuple[Built, bytes]) -> None:
    _, data = sample
    result = verify(data)
    assert result.findings == []
    assert result.records == 8  # epoch, genesis, six usage records


def test_every_single_byte_change_is_detected(sample: tuple[Built, bytes]) -> None:
    _, data = sample
    frames = frame_offsets(data)
    for pos in range(len(data)):
        mutated = bytearray(data)
        mutated[pos] ^= 0x01
        result = verify(bytes(mutated))
        assert result.critical, f"flip at byte {pos} went unnoticed"
        inside_frame = any(a <= pos < b for a, b in frames)
        if inside_frame:
            # The record itself is named, not only the container signature.
            assert result.codes & RECORD_LEVEL or F.REPORT_TRUNCATED in result.codes, (
                pos,
                result.codes,
            )


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_random_byte_changes_are_detected(sample: tuple[Built, bytes], pos: int, xor: int) -> None:
    _, data = sample
    mutated = bytearray(data)
    mutated[pos % len(data)] ^= xor
    assert verify(bytes(mutated)).critical


def test_each_deleted_record_is_named_missing(sample: tuple[Built, bytes]) -> None:
    built, data = sample
    parts = split(data)
    for i in range(2, len(parts.frames) - 1):
        frames = parts.frames[:i] + parts.frames[i + 1 :]
        result = verify(
            join(type(parts)(parts.header, frames, parts.trailer), built.writer.instance_key)
        )
        missing = [f for f in result.findings if f.code == F.RECORD_MISSING]
        assert [f.seq for f in missing] == [i], result.findings


def test_each_duplicated_record_is_named(sample: tuple[Built, bytes]) -> None:
    built, data = sample
    parts = split(data)
    for i in range(1, len(parts.frames)):
        frames = parts.frames[: i + 1] + [parts.frames[i]] + parts.frames[i + 1 :]
        result = verify(
            join(type(parts)(parts.header, frames, parts.trailer), built.writer.instance_key)
        )
        dups = [f for f in result.findings if f.code == F.RECORD_DUPLICATE]
        assert [f.seq for f in dups] == [i], result.findings


def test_each_swap_of_neighbours_is_named_out_of_order(sample: tuple[Built, bytes]) -> None:
    built, data = sample
    parts = split(data)
    for i in range(1, len(parts.frames) - 1):
        frames = list(parts.frames)
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
        result = verify(
            join(type(parts)(parts.header, frames, parts.trailer), built.writer.instance_key)
        )
        assert F.RECORD_OUT_OF_ORDER in result.codes, (i, result.findings)
        assert F.RECORD_MISSING not in result.codes


def test_every_truncation_point_is_detected(sample: tuple[Built, bytes]) -> None:
    _, data = sample
    for cut in range(len(data)):
        result = verify(data[:cut])
        assert result.critical, cut
        assert result.codes & {F.REPORT_TRUNCATED, F.REPORT_MALFORMED, F.RECORD_MALFORMED}, (
            cut,
            result.codes,
        )


def test_truncation_rewritten_to_look_whole_is_caught_by_claimed_head(
    sample: tuple[Built, bytes],
) -> None:
    built, data = sample
    parts = split(data)
    shorter = type(parts)(parts.header, parts.frames[:-2], parts.trailer)
    result = verify(join(shorter, built.writer.instance_key, fix_trailer=False))
    assert F.LEDGER_TRUNCATED in result.codes


def test_report_signature_covers_the_container(sample: tuple[Built, bytes], tmp_path: Path) -> None:
    _, data = sample
    parts = split(data)
    parts.header["created_ms"] += 1
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    result = verify(join(parts, Ed25519PrivateKey.generate()))
    assert F.REPORT_SIGNATURE_INVALID in result.codes
