"""The vendor's witness check over a report's records (vendorkit/_witness.py)."""

from __future__ import annotations

import hashlib

from meterbox.ledger import Head, Record, RecordType
from meterbox.ledger.records import Usage, Witness, WitnessMismatch
from meterbox.vendorkit._witness import (
    MAX_LISTED,
    WITNESS_HEAD_MISSING,
    WITNESS_MISMATCH,
    witness_findings,
)


def _h(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def _rec(seq: int, payload: Usage | Witness | WitnessMismatch) -> tuple[Record, bytes]:
    r = Record(seq, payload.record_type, 0, 1000 * seq, seq, payload.to_map())
    return r, _h(seq)


def _chain(first: int, last: int, *extra: tuple[Record, bytes]) -> list[tuple[Record, bytes]]:
    out = [_rec(s, Usage(meter="m", amount=1)) for s in range(first, last + 1)]
    return out + list(extra)


def _codes(pairs: list[tuple[Record, bytes]], acked: Head | None = None) -> list[str]:
    return [f.code for f in witness_findings(pairs, acked)]


def test_a_witnessed_head_the_chain_has_is_no_finding() -> None:
    w = _rec(21, Witness(client_id="a", seq=15, head_hash=_h(15)))
    assert _codes(_chain(10, 20, w)) == []


def test_a_witnessed_head_with_another_hash_is_missing() -> None:
    w = _rec(21, Witness(client_id="a", seq=15, head_hash=_h(99)))
    findings = witness_findings(_chain(10, 20, w))
    assert [(f.code, f.severity, f.seq) for f in findings] == [
        (WITNESS_HEAD_MISSING, "critical", 21)
    ]
    assert "client a" in findings[0].message and "seq 15" in findings[0].message


def test_a_witnessed_head_past_the_chain_is_missing() -> None:
    w = _rec(21, Witness(client_id="a", seq=40, head_hash=_h(40)))
    [f] = witness_findings(_chain(10, 20, w))
    assert f.code == WITNESS_HEAD_MISSING and "ends at seq 21" in f.message


def test_a_head_before_the_report_is_checked_only_against_the_acknowledged_head() -> None:
    old = _rec(21, Witness(client_id="a", seq=5, head_hash=_h(5)))
    assert _codes(_chain(10, 20, old)) == []
    assert _codes(_chain(10, 20, old), Head(5, _h(5))) == []
    assert _codes(_chain(10, 20, old), Head(5, _h(55))) == [WITNESS_HEAD_MISSING]


def test_an_unauthentic_record_in_between_is_left_to_the_verifier() -> None:
    pairs = _chain(10, 12) + _chain(14, 20)  # 13 was not yielded
    pairs.append(_rec(21, Witness(client_id="a", seq=13, head_hash=_h(99))))
    assert _codes(pairs) == []


def test_every_mismatch_record_is_critical() -> None:
    m = WitnessMismatch(client_id="a", seq=90, head_hash=_h(90), server_seq=20, reason="ahead")
    [f] = witness_findings(_chain(10, 20, _rec(21, m)))
    assert (f.code, f.severity, f.seq) == (WITNESS_MISMATCH, "critical", 21)
    assert "never had" in f.message and "seq 20" in f.message


def test_an_ill_formed_mismatch_payload_still_counts() -> None:
    r = Record(21, RecordType.WITNESS_MISMATCH, 0, 0, 0, {"s": "x"})
    assert _codes([*_chain(10, 20), (r, _h(21))]) == [WITNESS_MISMATCH]


def test_many_findings_are_listed_up_to_a_bound_then_counted() -> None:
    ms = [
        _rec(100 + i, WitnessMismatch(seq=500 + i, head_hash=_h(i), server_seq=99, reason="ahead"))
        for i in range(MAX_LISTED + 7)
    ]
    findings = witness_findings(_chain(10, 99) + ms)
    assert len(findings) == MAX_LISTED + 1
    assert findings[-1].message == "7 more like the above"
