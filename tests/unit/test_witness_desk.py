"""The server's judgement of witnessed heads: what it seals, once, in bounded memory."""

from __future__ import annotations

from meterbox.ledger.records import Witness, WitnessMismatch
from meterbox.server._witness import Verdict, WitnessConfig, WitnessDesk
from meterbox.witness import WitnessHead

ME = "00" * 16
OTHER = "11" * 16


def _h(n: int) -> bytes:
    return n.to_bytes(32, "big")


def _desk(**config: int) -> WitnessDesk:
    desk = WitnessDesk(ME, WitnessConfig(**config))
    desk.seed((seq, _h(seq)) for seq in range(0, 101))
    return desk


def test_verdicts() -> None:
    desk = _desk()
    judge = desk.judge
    assert judge(WitnessHead(ME, 50, _h(50)), 100, _h(100)) is Verdict.MATCH
    assert judge(WitnessHead(ME, 100, _h(100)), 100, _h(100)) is Verdict.MATCH
    assert judge(WitnessHead(ME, 100, _h(7)), 100, _h(100)) is Verdict.DIFFERS
    assert judge(WitnessHead(ME, 50, _h(7)), 100, _h(100)) is Verdict.DIFFERS
    assert judge(WitnessHead(ME, 101, _h(101)), 100, _h(100)) is Verdict.AHEAD
    assert judge(WitnessHead(OTHER, 101, _h(101)), 100, _h(100)) is Verdict.FOREIGN


def test_a_head_older_than_the_index_is_looked_up_once() -> None:
    desk = _desk(index_size=10)
    old = WitnessHead(ME, 5, _h(5))
    assert desk.judge(old, 100, _h(100)) is Verdict.UNKNOWN
    assert desk.learn(old, has_it=True) is Verdict.MATCH
    assert desk.judge(old, 100, _h(100)) is Verdict.MATCH
    forged = WitnessHead(ME, 6, _h(66))
    assert desk.learn(forged, has_it=False) is Verdict.DIFFERS
    assert desk.judge(forged, 100, _h(100)) is Verdict.DIFFERS


def test_one_witness_per_client_and_new_head() -> None:
    desk = _desk(seal_every_ms=0)
    first = desk.settle("a", WitnessHead(ME, 40, _h(40)), Verdict.MATCH, 100)
    assert first == Witness(client_id="a", seq=40, head_hash=_h(40))
    assert desk.settle("a", WitnessHead(ME, 40, _h(40)), Verdict.MATCH, 100) is None
    assert desk.settle("a", WitnessHead(ME, 39, _h(39)), Verdict.MATCH, 100) is None
    assert desk.settle("b", WitnessHead(ME, 40, _h(40)), Verdict.MATCH, 100) is not None
    assert desk.settle("a", WitnessHead(ME, 41, _h(41)), Verdict.MATCH, 100) is not None
    assert desk.settle("a", WitnessHead(OTHER, 99, _h(1)), Verdict.FOREIGN, 100) is None
    assert desk.witnesses == 3 and desk.foreign == 1


def test_witnesses_of_one_client_are_sealed_at_most_every_interval() -> None:
    desk = _desk(seal_every_ms=10_000)
    assert desk.settle("a", WitnessHead(ME, 40, _h(40)), Verdict.MATCH, 100, 1_000)
    assert desk.settle("a", WitnessHead(ME, 41, _h(41)), Verdict.MATCH, 100, 10_999) is None
    assert desk.settle("b", WitnessHead(ME, 41, _h(41)), Verdict.MATCH, 100, 10_999)
    assert desk.settle("a", WitnessHead(ME, 42, _h(42)), Verdict.MATCH, 100, 11_000)
    # An unchecked head is sealed whatever the interval: the vendor's check is its only one.
    assert desk.settle("a", WitnessHead(ME, 43, _h(43)), Verdict.UNCHECKED, 100, 11_001)
    assert desk.settle("a", WitnessHead(ME, 43, _h(43)), Verdict.UNCHECKED, 100, 11_002) is None
    # A mismatch is never throttled.
    assert desk.settle("a", WitnessHead(ME, 420, _h(1)), Verdict.AHEAD, 100, 11_001)


def test_one_mismatch_per_client_and_head_and_the_status_names_the_last() -> None:
    desk = _desk()
    lost = WitnessHead(ME, 140, _h(140))
    record = desk.settle("a", lost, Verdict.AHEAD, 100)
    assert record == WitnessMismatch(
        client_id="a", seq=140, head_hash=_h(140), server_seq=100, reason="ahead"
    )
    assert desk.settle("a", lost, Verdict.AHEAD, 101) is None
    assert desk.settle("b", lost, Verdict.AHEAD, 101) is not None
    status = desk.status()
    assert status["mismatches"] == 2
    assert status["last_mismatch"]["client_id"] == "b"
    assert status["last_mismatch"]["witnessed_seq"] == 140


def test_memory_stays_bounded_under_a_flood() -> None:
    desk = _desk(index_size=50, clients=20, mismatches=30)
    for i in range(5000):
        desk.given(1000 + i, _h(i))
        desk.settle(f"c{i}", WitnessHead(ME, i, _h(i)), Verdict.MATCH, 6000)
        desk.settle(f"c{i}", WitnessHead(ME, 9000 + i, _h(i)), Verdict.AHEAD, 6000)
    assert len(desk._index) == 50
    assert len(desk._last) == 20
    assert len(desk._mismatched) == 30
