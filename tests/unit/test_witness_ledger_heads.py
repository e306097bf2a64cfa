"""Chain hashes recomputed from a real ledger's frames match the heads the writer had."""

from __future__ import annotations

from pathlib import Path

from meterbox.ledger import RecordType, hash_at, recent_heads
from meterbox.server._sinks import LedgerEventSink
from support.vendor_ingest import issue, make_home, make_site


def test_recomputed_heads_are_the_writers_and_the_sink_answers_from_the_file(
    tmp_path: Path,
) -> None:
    home = make_home(tmp_path)
    site = make_site(home, tmp_path / "ledger", [issue(home)])
    heads = {}
    for i in range(40):
        appended = site.writer.append(RecordType.USAGE, {"m": "solver", "a": i})
        heads[appended.seq] = appended.head.hash
    with site.writer.snapshot() as snap:
        recent = recent_heads(snap.header, snap.chunks(size=100), keep=10)
        last = snap.head
    assert recent[-1] == (last.seq, last.hash)
    assert [s for s, _ in recent] == list(range(last.seq - 9, last.seq + 1))
    assert all(heads[s] == h for s, h in recent if s in heads)
    with site.writer.snapshot() as snap:
        assert hash_at(snap.header, snap.chunks(size=7), 5) == heads[5]
        assert hash_at(snap.header, snap.chunks(), last.seq + 1) is None

    sink = LedgerEventSink(site.writer, RecordType.from_kind)
    assert sink.has_head(5, heads[5])
    assert not sink.has_head(5, heads[6])
    assert not sink.has_head(last.seq + 3, heads[6])
    site.writer.close()
