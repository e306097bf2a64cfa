"""The activity log rotates by size and by age and reads back in order across files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterbox.server._activity import ActivityConfig, ActivityLog, files, read, select

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def test_rotation_by_size_keeps_the_newest_files_and_reads_in_order(tmp_path: Path) -> None:
    path = tmp_path / "activity.jsonl"
    log = ActivityLog(path, ActivityConfig(max_bytes=400, keep=3))
    for i in range(40):
        log.write(T0 + timedelta(seconds=i), "checkout", client_id=f"c{i}")
    log.close()
    assert [p.name for p in files(path)] == [
        "activity.jsonl.3", "activity.jsonl.2", "activity.jsonl.1", "activity.jsonl",
    ]  # fmt: skip
    assert all(p.stat().st_size <= 400 for p in files(path))
    kept = [e["client_id"] for e in read(path)]
    # The oldest entries went with the oldest file; the rest are whole and in order.
    assert kept == [f"c{i}" for i in range(40 - len(kept), 40)] and len(kept) >= 20


def test_rotation_by_age_and_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "activity.jsonl"
    log = ActivityLog(path, ActivityConfig(max_age=timedelta(days=1)))
    log.write(T0, "checkout", client_id="a")
    log.write(T0 + timedelta(days=2), "release", client_id="a")
    log.close()
    assert len(files(path)) == 2
    with path.open("a") as f:
        f.write('{"time": "2026-03-0')
    assert [e["event"] for e in read(path)] == ["checkout", "release"]
    later = list(select(read(path), since=T0 + timedelta(days=1), client_id="a"))
    assert [e["event"] for e in later] == ["release"]
