"""The state's watermark (ADR 0044): it never claims a durable record whose state
change is not committed, and every committed record is at or below it or ahead."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meterbox.server._core.changes import SeqMax
from meterbox.server._core.commits import CommitMarks


def test_a_later_commit_leaves_the_watermark_below_an_earlier_pending_record() -> None:
    marks = CommitMarks()
    for seq in (1, 2, 3):
        marks.durable(seq, 0.0)
    assert marks.commit([1], 0.0) == SeqMax(1, ())
    assert marks.commit([3], 0.0) == SeqMax(1, (3,))  # 2 is durable, not committed
    assert marks.commit([2], 0.0) == SeqMax(3, ())


def test_a_record_whose_request_never_commits_is_passed_after_the_hold() -> None:
    marks = CommitMarks(hold_s=10.0)
    marks.durable(1, 0.0)
    marks.durable(2, 0.0)
    assert marks.commit([2], 5.0) == SeqMax(0, (2,))
    assert marks.commit([], 10.5) == SeqMax(2, ())  # 1's request failed after its record
    assert marks.pending == frozenset()


def test_too_many_seqs_ahead_give_up_the_oldest_pending() -> None:
    marks = CommitMarks(max_ahead=3)
    for seq in range(1, 7):
        marks.durable(seq, 0.0)
    for seq in (2, 3, 4):
        assert marks.commit([seq], 0.0) == SeqMax(0, tuple(range(2, seq + 1)))
    assert marks.commit([5], 0.0) == SeqMax(5, ())


def test_a_durable_report_after_the_watermark_passed_it_is_ignored() -> None:
    marks = CommitMarks()
    marks.durable(3, 0.0)
    assert marks.commit([3], 0.0) == SeqMax(3, ())
    marks.durable(2, 0.0)  # told late: the watermark is already past it
    assert marks.pending == frozenset()
    assert marks.commit([], 0.0) is None


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[str, int]]:
    """Records 1..n made durable in seq order; each committed later, in any order, or
    never; the events interleaved."""
    n = draw(st.integers(1, 30))
    never = draw(st.sets(st.integers(1, n), max_size=n // 3))
    commits = [s for s in range(1, n + 1) if s not in never]
    order = draw(st.permutations(commits))
    events: list[tuple[str, int]] = []
    durable, pending = 1, list(order)
    while durable <= n or pending:
        ready = [s for s in pending if s < durable]
        if durable <= n and (not ready or draw(st.booleans())):
            events.append(("durable", durable))
            durable += 1
        else:
            s = ready[0]
            pending.remove(s)
            events.append(("commit", s))
    return events


@given(schedules())
def test_the_watermark_never_claims_an_uncommitted_record(events: list[tuple[str, int]]) -> None:
    marks = CommitMarks(hold_s=1e9, max_ahead=10_000)
    durable: set[int] = set()
    committed: set[int] = set()
    last = SeqMax(0)
    for kind, seq in events:
        if kind == "durable":
            marks.durable(seq, 0.0)
            durable.add(seq)
            continue
        mark = marks.commit([seq], 0.0)
        assert mark is not None
        committed.add(seq)
        assert mark.seq >= last.seq
        assert all(s > mark.seq for s in durable - committed)
        assert all(s <= mark.seq or s in mark.ahead for s in committed)
        assert set(mark.ahead) <= committed and all(s > mark.seq for s in mark.ahead)
        last = mark
    if durable == committed and committed:
        assert last == SeqMax(max(committed), ())
