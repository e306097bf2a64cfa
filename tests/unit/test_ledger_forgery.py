"""Forgery with only the public key, splicing, the wrong vendor key, unknown versions."""

from __future__ import annotations

import shutil
from pathlib import Path

from meterbox.crypto import KEY_LEN
from meterbox.ledger import LedgerWriter, RecordType
from meterbox.ledger import findings as F
from meterbox.ledger._format import chain
from meterbox.ledger._seal import Sealer
from support.ledger import (
    OTHER_VENDOR,
    OTHER_VENDOR_ID,
    VENDOR,
    VENDOR_ID,
    add_usage,
    export,
    make_ledger,
    next_epoch_forger,
    verify,
)
from support.report_surgery import join, split


def test_epoch_forged_with_only_the_public_key_is_detected(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    data = export(built)
    parts = split(data)
    # The forger knows the vendor's public key and the head, but not the chain key.
    forger = next_epoch_forger(built.writer, random=lambda n: b"\x07" * n)
    forged = [forger.begin_epoch(boot_id=b"\x02" * 16, wall_ms=1, mono_ms=1, first=True)]
    forged.append(
        forger.seal(RecordType.USAGE, {"m": "solver", "a": 1_000_000}, wall_ms=2, mono_ms=2)
    )
    parts.frames.extend(forged)
    result = verify(join(parts, built.writer.instance_key))
    assert F.EPOCH_FORGED in result.codes
    built.writer.close()


def test_forged_first_epoch_against_known_chain_key(tmp_path: Path) -> None:
    from meterbox.ledger import ChainState, Known

    built = make_ledger(tmp_path / "l")
    add_usage(built, 3)
    first = verify(export(built))
    assert first.chain is not None
    data = export(built)
    parts = split(data)
    # Replace the genesis epoch's sealed chain key by one the forger chose.
    forger = Sealer(
        instance_id=built.writer.instance_id,
        vendor_key=VENDOR.public_key(),
        vendor_key_id=VENDOR_ID,
        chain_key=b"\x43" * KEY_LEN,
        epoch=0,
        next_seq=0,
        head_hash=parts.header["base_hash"],
        random=lambda n: b"\x09" * n,
    )
    parts.frames = [forger.begin_epoch(boot_id=b"\x01" * 16, wall_ms=1, mono_ms=1, first=True)]
    known = Known(head=first.head.__class__(-1, b""), chain=ChainState(0, first.chain.key))  # type: ignore[union-attr]
    result = verify(join(parts, built.writer.instance_key), known=known)
    assert F.EPOCH_FORGED in result.codes
    built.writer.close()


def test_records_spliced_from_another_ledger_are_detected(tmp_path: Path) -> None:
    a = make_ledger(tmp_path / "a", seed=1)
    b = make_ledger(tmp_path / "b", seed=2)
    add_usage(a, 4)
    add_usage(b, 4)
    pa, pb = split(export(a)), split(export(b))
    # Single records from b dropped into a's stream in place of a's own.
    spliced = pa.frames[:3] + pb.frames[3:5] + pa.frames[5:]
    result = verify(join(type(pa)(pa.header, spliced, pa.trailer), a.writer.instance_key))
    assert F.RECORD_UNAUTHENTIC in result.codes
    # A whole epoch of b appended to a: its epoch record names b's instance.
    whole = pa.frames + pb.frames
    result = verify(join(type(pa)(pa.header, whole, pa.trailer), a.writer.instance_key))
    assert F.EPOCH_FOREIGN in result.codes
    a.writer.close()
    b.writer.close()


def test_report_for_another_vendor_is_named(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l", vendor=OTHER_VENDOR)
    add_usage(built, 2)
    result = verify(export(built))
    assert F.REPORT_WRONG_VENDOR_KEY in result.codes
    # With the right key the same report is clean: the finding is about the key only.
    assert verify(export(built), vendor_keys={OTHER_VENDOR_ID: OTHER_VENDOR}).findings == []
    built.writer.close()


def test_vendor_key_with_matching_id_but_wrong_secret_cannot_open(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 2)
    result = verify(export(built), vendor_keys={VENDOR_ID: OTHER_VENDOR})
    assert F.EPOCH_UNOPENABLE in result.codes
    built.writer.close()


def test_unknown_report_version_is_named(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    data = bytearray(export(built))
    data[4] = 2
    assert F.REPORT_UNKNOWN_VERSION in verify(bytes(data)).codes
    built.writer.close()


def test_unknown_record_version_is_named(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 2)
    parts = split(export(built))
    frame = bytearray(parts.frames[2])
    frame[2] = 9  # the version byte of the record body
    parts.frames[2] = bytes(frame)
    assert F.RECORD_UNKNOWN_VERSION in verify(join(parts, built.writer.instance_key)).codes
    built.writer.close()


def test_copying_the_files_without_the_chain_key_cannot_extend(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    add_usage(built, 2)
    built.writer.close()
    copy = tmp_path / "copy"
    shutil.copytree(built.directory, copy)
    (copy / "chain.key").unlink()
    import pytest

    from meterbox.errors import StateError

    with pytest.raises(StateError, match="chain key is missing"):
        LedgerWriter.open(copy, clock=built.clock)


def test_chain_hash_is_over_whole_frames() -> None:
    assert chain(b"\x00" * 32, b"a") != chain(b"\x00" * 32, b"b")
