"""Fuzz the server's own data files: ledger.mbl, chain.key, ledger.meta, instance.key, state.db.

The customer's admin can edit any of them. Opening a damaged directory must either
refuse with a clear error and leave every byte as it was, or (for a torn tail only)
cut the tail, keep the verified prefix byte for byte, and record the cut.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.clock import SystemClock
from meterbox.ledger import LedgerWriter, RecordType
from support.fuzz import (
    assert_clean_error,
    call_parser,
    fuzz_settings,
    make_site,
    mutate,
    tree_digest,
)

LEDGER_FILES = ["ledger.mbl", "chain.key", "instance.key"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real server data directory with a few hundred records, closed cleanly."""
    root = tmp_path_factory.mktemp("ledger-fuzz")
    site = make_site(root)
    writer = LedgerWriter.open(site.data / "ledger", clock=SystemClock())
    try:
        for i in range(300):
            writer.submit(
                RecordType.USAGE, {"m": "runs", "a": 1, "c": f"c{i % 7}", "k": f"{i:032x}"}
            )
        writer.append(RecordType.HEARTBEAT, {})
    finally:
        writer.close()
    return site.data


def _work_copy(pristine: Path, tmp: Path) -> Path:
    work = tmp / "data"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(pristine, work)
    work.chmod(0o700)
    return work


def _open_and_check(ledger_dir: Path, original: bytes) -> None:
    before = tree_digest(ledger_dir)
    writer, error = call_parser(
        "ledger.open", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    if error is not None:
        assert tree_digest(ledger_dir) == before, f"refused open changed the ledger: {error}"
        return
    try:
        assert writer is not None
        recovery = writer.recovery
        if recovery is not None:
            # What was kept must be the verified prefix of what was there.
            kept = (ledger_dir / "ledger.mbl").read_bytes()[: recovery.cut_offset]
            assert (
                original.startswith(kept)
                or (ledger_dir / "ledger.mbl").read_bytes()[: recovery.cut_offset] == kept
            )
    finally:
        writer.close()


@fuzz_settings(weight=0.5)
@given(name=st.sampled_from(LEDGER_FILES), seed=st.integers(0, 2**32 - 1))
def test_mutated_ledger_files_open_cleanly_or_refuse_unchanged(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, name: str, seed: int
) -> None:
    work = _work_copy(pristine, tmp_path_factory.getbasetemp() / f"w-{name}")
    ledger_dir = work / "ledger"
    original = (ledger_dir / name).read_bytes()
    mutated = mutate(original, random.Random(seed))
    (ledger_dir / name).write_bytes(mutated)
    _open_and_check(ledger_dir, (ledger_dir / "ledger.mbl").read_bytes())


@fuzz_settings(weight=0.5)
@given(
    name=st.sampled_from(["chain.key", "instance.key"]),
    data=st.binary(max_size=256),
)
def test_generated_key_and_meta_files_refuse_unchanged(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, name: str, data: bytes
) -> None:
    work = _work_copy(pristine, tmp_path_factory.getbasetemp() / f"g-{name}")
    ledger_dir = work / "ledger"
    if (ledger_dir / name).read_bytes() == data:
        return
    (ledger_dir / name).write_bytes(data)
    before = tree_digest(ledger_dir)
    writer, error = call_parser(
        "ledger.open", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    if writer is not None:
        writer.close()
    assert writer is None, f"a ledger opened with a generated {name}"
    assert error is not None
    assert_clean_error(error, name)
    assert tree_digest(ledger_dir) == before


@pytest.mark.parametrize(
    "payload",
    [
        b"\x82\xa1e\x00\xa1k\xcf\x3f\xff\xff\xff\xff\xff\xff\xff",  # {"e": 0, "k": 2**62-ish}
        b"\x82\xa1e\x00\xa1k\xd3\x80\x00\x00\x00\x00\x00\x00\x00",  # {"e": 0, "k": -2**63}
        b"\x82\xa1e\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00\xa1k\xc4\x20" + bytes(32),  # e = inf
    ],
    ids=["huge-int-key", "negative-int-key", "infinite-epoch"],
)
def test_chain_key_with_numbers_where_bytes_belong_is_refused(
    pristine: Path, tmp_path: Path, payload: bytes
) -> None:
    # bytes(n) of a number read from the file must never allocate n bytes.
    ledger_dir = _work_copy(pristine, tmp_path) / "ledger"
    (ledger_dir / "chain.key").write_bytes(payload)
    before = tree_digest(ledger_dir)
    writer, error = call_parser(
        "chain.key", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    if writer is not None:
        writer.close()
    assert error is not None
    assert tree_digest(ledger_dir) == before


@fuzz_settings(weight=0.5)
@given(
    data=st.binary(max_size=256) | st.integers(0, 2**32 - 1).map(lambda seed: b"mutate:%d" % seed)
)
def test_damaged_ledger_meta_is_a_state_error_not_a_crash(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    # ledger.meta is msgpack; a damaged copy must be refused like chain.key is, with a
    # StateError naming the file, not a ValueError/KeyError/UnicodeDecodeError from msgpack.
    ledger_dir = _work_copy(pristine, tmp_path_factory.getbasetemp() / "meta") / "ledger"
    original = (ledger_dir / "ledger.meta").read_bytes()
    if data.startswith(b"mutate:"):
        data = mutate(original, random.Random(int(data[7:])))
    if data == original:
        return
    (ledger_dir / "ledger.meta").write_bytes(data)
    before = tree_digest(ledger_dir)
    writer, error = call_parser(
        "ledger.meta", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    if writer is not None:
        writer.close()
        return
    assert error is not None
    assert tree_digest(ledger_dir) == before


@pytest.mark.parametrize(
    "payload",
    [b"\x81\x01\x02", b"\xc1", b"\x80", b"\x91\x01", b"\x82\xa1v\x01"],
    ids=["int-key", "invalid-byte", "empty-map", "list", "no-instance-id"],
)
def test_ledger_meta_regressions(pristine: Path, tmp_path: Path, payload: bytes) -> None:
    ledger_dir = _work_copy(pristine, tmp_path) / "ledger"
    (ledger_dir / "ledger.meta").write_bytes(payload)
    _writer, error = call_parser(
        "ledger.meta", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    assert error is not None


@fuzz_settings(weight=0.3)
@given(seed=st.integers(0, 2**32 - 1))
def test_mutated_state_db_is_refused_cleanly(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    from meterbox.server._instance import ServerInstance

    work = _work_copy(pristine, tmp_path_factory.getbasetemp() / "state")
    original = (work / "state.db").read_bytes()
    (work / "state.db").write_bytes(mutate(original, random.Random(seed)))
    instance, _error = call_parser("state.db", lambda: ServerInstance.open(work))
    if instance is not None:
        instance.close()


def test_state_db_regression_null_time_is_a_state_error(pristine: Path, tmp_path: Path) -> None:
    import sqlite3

    from meterbox.errors import StateError
    from meterbox.server._state import StateStore

    work = _work_copy(pristine, tmp_path)
    db = sqlite3.connect(work / "state.db")
    db.execute("UPDATE meta SET value = 'not-a-number' WHERE key = 'init_time'")
    db.commit()
    db.close()
    store = StateStore(work / "state.db")
    try:
        with pytest.raises(StateError) as info:
            store.load()
        assert_clean_error(info.value, "state.db")
    finally:
        store.close()


#: File header of a ledger (docs/spec/ledger.md, "File header").
_LEDGER_HEADER_BYTES = 61


def test_damage_in_an_earlier_epoch_is_refused_without_cutting_the_file(tmp_path: Path) -> None:
    # Found by the full fuzz run (ledger.mbl, seed 3240): open() cut the "torn tail"
    # first and only then found that chain.key belongs to a later epoch than the cut
    # ledger reaches, so it refused after having truncated the file.
    from meterbox.ledger import LedgerConfig

    site = make_site(tmp_path)
    ledger_dir = site.data / "ledger"
    writer = LedgerWriter.open(
        ledger_dir, clock=SystemClock(), config=LedgerConfig(epoch_max_records=50)
    )
    try:
        for i in range(300):
            writer.submit(RecordType.USAGE, {"m": "runs", "a": 1, "c": "c", "k": f"{i:032x}"})
        writer.append(RecordType.HEARTBEAT, {})
    finally:
        writer.close()
    path = ledger_dir / "ledger.mbl"
    data = bytearray(path.read_bytes())
    # Break the framing a third of the way in (an earlier epoch): the frame's length
    # field now runs past the end, so the scan sees a "torn tail" there. A flipped
    # ciphertext byte would not do: the server holds no key for earlier epochs and
    # cannot see it (the vendor does), so only structural damage reaches open().
    offsets = []
    at = _LEDGER_HEADER_BYTES
    while at + 2 <= len(data):
        offsets.append(at)
        at += 2 + int.from_bytes(data[at : at + 2], "big")
    data[offsets[len(offsets) // 3]] ^= 0x80
    path.write_bytes(bytes(data))
    before = tree_digest(ledger_dir)
    opened, error = call_parser(
        "ledger.open", lambda: LedgerWriter.open(ledger_dir, clock=SystemClock())
    )
    if opened is not None:
        opened.close()
    assert error is not None, "a ledger whose chain key is epochs ahead of its damage opened"
    assert tree_digest(ledger_dir) == before, "the refused open truncated ledger.mbl"
