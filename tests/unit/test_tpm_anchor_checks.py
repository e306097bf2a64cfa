"""Pure TPM anchor logic: the server's open verdict and note, the vendor's anchor checks.

The swtpm-backed scenarios are in tests/integration/test_tpm_anchor_server.py; here the
decisions are pinned case by case and by property, without a TPM.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import FormatError
from meterbox.ledger import Appended, Head, Record, RecordType
from meterbox.ledger import TpmAnchor as TpmAnchorRecord
from meterbox.server._tpm import AnchorNote, OpenVerdict, TpmGuard, judge_open
from meterbox.tpm import TpmPins, report_nonce
from meterbox.vendorkit._tpm_check import TpmReportCheck

NV = "000b" + "ab" * 32
counters = st.integers(0, 2**63)
notes = st.builds(
    AnchorNote,
    committed=counters,
    pending=st.none() | counters,
    seq=st.none() | st.integers(0, 2**40),
    head=st.none() | st.binary(min_size=32, max_size=32).map(bytes.hex),
)


# --------------------------------------------------------------------- the note
@given(notes)
def test_note_round_trips(note: AnchorNote) -> None:
    assert AnchorNote.from_bytes(note.to_bytes()) == note


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_any_bytes_are_a_note_or_a_format_error(data: bytes) -> None:
    try:
        AnchorNote.from_bytes(data)
    except FormatError as exc:
        problem = exc.problem
    else:
        return
    assert "anchor note is unreadable" in problem


@pytest.mark.parametrize(
    "change",
    [
        {"v": 2},
        {"committed": -1},
        {"committed": True},
        {"committed": "7"},
        {"pending": 1.5},
        {"head": "ab" * 31},
        {"head": "zz" * 32},
    ],
)
def test_a_bad_note_field_is_named(change: dict[str, Any]) -> None:
    base = json.loads(AnchorNote(5, None, 3, "ab" * 32).to_bytes())
    with pytest.raises(FormatError, match="anchor note is unreadable"):
        AnchorNote.from_bytes(json.dumps({**base, **change}).encode())


# ------------------------------------------------------------------ open verdict
def test_in_step_and_crash_between_increment_and_record_are_normal() -> None:
    assert judge_open(AnchorNote(7, None, 1, None), 0, 7, note_in_ledger=True).rollback is None
    resync = judge_open(AnchorNote(7, 8, 1, None), 0, 8, note_in_ledger=True)
    assert (resync.rollback, resync.reason) == (None, "resync")
    # The note was written, the TPM never asked: still in step.
    assert judge_open(AnchorNote(7, 8, 1, None), 0, 7, note_in_ledger=True).rollback is None


@given(counters, st.integers(1, 2**20), st.none() | st.just(1))
def test_a_tpm_ahead_of_the_note_beyond_its_pending_value_is_a_rollback(
    committed: int, ahead: int, pending_step: int | None
) -> None:
    pending = None if pending_step is None else committed + 1
    tpm = committed + ahead + (1 if pending is not None else 0)
    verdict = judge_open(AnchorNote(committed, pending, 1, None), 0, tpm, note_in_ledger=True)
    assert verdict.rollback is not None
    assert verdict.rollback["k"] == "rollback"
    assert (verdict.rollback["l"], verdict.rollback["t"]) == (committed, tpm)


def test_a_tpm_below_the_ledger_is_ahead_and_a_missing_note_or_old_ledger_is_ledger() -> None:
    ahead = judge_open(AnchorNote(9, None, 1, None), 0, 3, note_in_ledger=True).rollback
    assert ahead is not None and ahead["k"] == "ahead"
    missing = judge_open(None, 2, 9, note_in_ledger=False).rollback
    assert missing is not None and missing["k"] == "ledger" and missing["l"] == 2
    old = judge_open(AnchorNote(9, None, 40, "ab" * 32), 0, 9, note_in_ledger=False).rollback
    assert old is not None and old["k"] == "ledger"


# ------------------------------------------------------------ the vendor's check
def _rec(seq: int, rtype: RecordType, payload: dict[str, Any]) -> Record:
    return Record(seq, rtype, 0, 1_000 + seq, 1_000 + seq, payload)


def _genesis(counter: int) -> Record:
    return _rec(0, RecordType.GENESIS, {"tpm": {"tpm": "tpm2", "counter": counter, "nv_name": NV}})


def _anchor(seq: int, counter: int, reason: str = "activity", nv: str = NV) -> Record:
    return _rec(seq, RecordType.TPM_ANCHOR, {"c": counter, "n": nv, "w": reason})


def _check(records: list[Record], pins: TpmPins | None = None) -> dict[str, str]:
    check = TpmReportCheck(pins or TpmPins(), required=False)
    for r in records:
        check.feed(r, acked=False)
    return {f.code: f.severity for f in check.findings}


def test_anchors_stepping_by_one_with_resyncs_are_clean() -> None:
    records = [_genesis(4), _anchor(1, 5, "open"), _anchor(2, 6), _anchor(3, 6, "resync")]
    assert _check([*records, _anchor(4, 7, "report")]) == {}


@given(st.integers(2, 1000))
def test_an_anchor_jump_is_a_gap(jump: int) -> None:
    codes = _check([_genesis(4), _anchor(1, 5, "open"), _anchor(2, 5 + jump, "open")])
    assert codes == {"tpm.counter.gap": "critical"}


def test_a_repeated_value_that_is_not_a_resync_is_a_gap_and_a_step_back_is_foreign() -> None:
    assert _check([_genesis(4), _anchor(1, 5), _anchor(2, 5)]) == {"tpm.counter.gap": "critical"}
    assert _check([_genesis(4), _anchor(1, 5), _anchor(2, 3)]) == {"tpm.ledger.foreign": "critical"}
    assert _check([_genesis(4), _anchor(1, 5, nv="000b" + "cd" * 32)]) == {
        "tpm.ledger.foreign": "critical"
    }


def test_the_first_anchor_continues_from_the_pinned_counter() -> None:
    pins = TpmPins(b"a", b"e", bytes.fromhex(NV), last_counter=20)
    assert _check([_anchor(30, 21)], pins) == {}
    assert _check([_anchor(30, 25)], pins) == {"tpm.counter.gap": "critical"}


@pytest.mark.parametrize(
    ("kind", "code", "severity"),
    [
        ("rollback", "tpm.ledger.rollback", "critical"),
        ("ledger", "tpm.ledger.rollback", "critical"),
        ("ahead", "tpm.ledger.foreign", "critical"),
        ("foreign", "tpm.ledger.foreign", "critical"),
        ("unavailable", "tpm.unavailable", "warning"),
    ],
)
def test_each_rollback_record_kind_has_its_finding(kind: str, code: str, severity: str) -> None:
    record = _rec(3, RecordType.TPM_ROLLBACK, {"k": kind, "l": 4, "t": 9})
    assert _check([_genesis(4), record]) == {code: severity}


def test_bad_tpm_payloads_are_critical_and_acked_records_are_not_judged_again() -> None:
    bad = _rec(2, RecordType.TPM_ANCHOR, {"c": "5"})
    assert _check([_genesis(4), bad]) == {"tpm.anchor.invalid": "critical"}
    check = TpmReportCheck(TpmPins(), required=False)
    check.feed(_genesis(4), acked=True)
    check.feed(_anchor(1, 99), acked=True)
    assert check.findings == []
    assert check.genesis_tpm


def test_an_instance_whose_genesis_has_a_tpm_must_attest() -> None:
    check = TpmReportCheck(TpmPins(), required=False)
    check.feed(_genesis(4), acked=False)
    check.feed(_anchor(1, 5, "open"), acked=False)
    codes = {f.code for f in check.finish({}, Head(1, bytes(32)), None, b"i" * 16)}
    assert codes == {"tpm.missing"}
    plain = TpmReportCheck(TpmPins(), required=False)
    plain.feed(_rec(0, RecordType.GENESIS, {"tpm": {"tpm": "none"}}), acked=False)
    assert plain.finish({}, Head(0, bytes(32)), None, b"i" * 16) == []
    assert plain.pins_after is None


def test_a_tpm_field_that_is_not_bytes_is_forged() -> None:
    check = TpmReportCheck(TpmPins(), required=True)
    codes = {f.code for f in check.finish({"tpm": "text"}, Head(0, bytes(32)), None, b"i")}
    assert codes == {"tpm.quote.forged"}


# ----------------------------------------------------------------- report nonce
def test_report_nonce_vector_and_construction() -> None:
    """Pinned values (spec "How a server uses the anchor", step 4) and the formula."""
    iid = bytes(range(16))
    assert report_nonce(iid, None).hex() == (
        "706763ff9e09443db362236fed91ff17e6f3377dd32174b5db1dc35a52a749ff"
    )
    assert report_nonce(iid, b"\xab" * 32).hex() == (
        "7b4d4f9ec705f148c12be82c7bd0fd3a874b4e530d0db40e53fca749af681bd6"
    )
    expected = hashlib.sha256(
        b"meterbox-tpm-nonce/1\x00" + hashlib.sha256(iid).digest() + b"\xab" * 32
    ).digest()
    assert report_nonce(iid, b"\xab" * 32) == expected


@given(st.binary(min_size=16, max_size=16), st.none() | st.binary(min_size=32, max_size=32))
def test_report_nonces_differ_per_receipt(iid: bytes, acked: bytes | None) -> None:
    other = bytes(32) if acked is not None else b"\x01" * 32
    assert report_nonce(iid, acked) != report_nonce(iid, other) or acked == other


def test_a_license_requiring_a_tpm_rejects_a_report_without_an_attestation() -> None:
    check = TpmReportCheck(TpmPins(), required=True)
    check.feed(_rec(0, RecordType.GENESIS, {"tpm": {"tpm": "none"}}), acked=False)
    findings = check.finish({}, Head(0, bytes(32)), None, b"i" * 16)
    assert [(f.code, f.severity) for f in findings] == [("tpm.missing", "critical")]
    assert "the license requires a TPM" in findings[0].message


# ------------------------------------------------- the guard's order, crash by crash
class _FakeTpm:
    """A counter that only goes up, standing in for TpmAnchor (read/advance/identity)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def read(self) -> int:
        return self.value

    def advance(self, head: bytes) -> int:
        self.value += 1
        return self.value

    def identity(self) -> dict[str, object]:
        return {"nv_name": NV}


class _Crash(Exception):
    pass


class _FakeWriter:
    epoch = 0

    def __init__(self) -> None:
        self.records: list[tuple[RecordType, dict[str, Any]]] = []
        self.fail_next = False

    def append(self, rtype: RecordType | str, payload: dict[str, Any]) -> Appended:
        if self.fail_next:
            self.fail_next = False
            raise _Crash
        assert isinstance(rtype, RecordType)
        self.records.append((rtype, payload))
        seq = len(self.records)
        return Appended(seq, Head(seq, hashlib.sha256(str(seq).encode()).digest()), 0)

    def verify_point(self, point: Head) -> None:
        return None


def test_a_failed_anchor_append_is_committed_as_a_resync_before_the_next_advance(
    tmp_path: Path,
) -> None:
    tpm, writer = _FakeTpm(10), _FakeWriter()
    guard = TpmGuard(tmp_path, device=None, anchor=tpm, writer=writer)  # type: ignore[arg-type]
    guard.advance("open")
    writer.fail_next = True
    with pytest.raises(_Crash):
        guard.advance("activity")
    # At this point a restart would see TPM == pending: a resync, not a rollback.
    note = AnchorNote.from_bytes((tmp_path / "tpm-anchor.json").read_bytes())
    assert judge_open(note, 10, tpm.value, note_in_ledger=True) == OpenVerdict(None, "resync")
    guard.advance("report")
    anchors = [TpmAnchorRecord.from_map(p) for t, p in writer.records]
    assert [(a.counter, a.reason) for a in anchors] == [
        (11, "open"),
        (12, "resync"),
        (13, "report"),
    ]
    check = TpmReportCheck(TpmPins(), required=False)
    check.feed(_genesis(10), acked=False)
    for seq, (t, p) in enumerate(writer.records, start=1):
        check.feed(_rec(seq, t, p), acked=False)
    assert check.findings == []
