"""The crash-image model itself: it finds the losses a power loss causes, and only those.

Each scenario runs a tiny write protocol under the recorder and checks that the
images it builds contain (or lack) the states a real power loss could leave.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from support.crashmodel import CrashPoint, Fault, Recorder, crash_images


def _write_file(path: Path, data: bytes, *, sync: bool, dirsync: bool, atomic: bool) -> None:
    target = path.with_name(path.name + ".tmp") if atomic else path
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if atomic:
        os.replace(target, path)
    if dirsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _promise_holds(root: Path, point: CrashPoint) -> None:
    """Once noted, ``f`` holds the noted bytes; before that, it is absent or old, whole."""
    path = root / "f"
    for expected in point.notes:
        assert path.exists(), "promised file is missing"
        assert path.read_bytes() == expected, f"promised {expected!r}, found {path.read_bytes()!r}"
    if path.exists() and not point.notes:
        assert path.read_bytes() in (b"old-contents", b"new-contents"), path.read_bytes()


def _run(tmp_path: Path, **protocol: bool) -> int:
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_bytes(b"old-contents")
    with Recorder(root) as rec:
        _write_file(root / "f", b"new-contents", **protocol)
        rec.note(b"new-contents")
    report = crash_images(rec, _promise_holds)
    assert report.images > 3, report.summary()
    return len(report.failures)


def test_atomic_replace_with_fsync_and_directory_fsync_never_loses(tmp_path: Path) -> None:
    assert _run(tmp_path, sync=True, dirsync=True, atomic=True) == 0


def test_replace_without_file_fsync_can_leave_an_empty_file(tmp_path: Path) -> None:
    assert _run(tmp_path, sync=False, dirsync=True, atomic=True) > 0


def test_replace_without_directory_fsync_can_come_back_old(tmp_path: Path) -> None:
    assert _run(tmp_path, sync=True, dirsync=False, atomic=True) > 0


def test_overwrite_in_place_can_be_torn(tmp_path: Path) -> None:
    assert _run(tmp_path, sync=True, dirsync=True, atomic=False) > 0


def test_broken_fdatasync_sanity_mode_persists_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "log").write_bytes(b"")
    with Recorder(root, broken_sync={"fdatasync"}) as rec:
        fd = os.open(root / "log", os.O_WRONLY)
        os.pwrite(fd, b"record", 0)
        os.fdatasync(fd)
        os.close(fd)
        rec.note(b"record")

    def holds(image: Path, point: CrashPoint) -> None:
        if point.notes:
            assert (image / "log").read_bytes() == b"record"

    assert crash_images(rec, holds).failures


def test_fault_hook_makes_a_short_write_then_enospc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()

    def full(kind: str, rel: str, n: int) -> Fault | None:
        if kind != "write":
            return None
        return Fault(short=3, error=None) if n == 0 else Fault()

    with Recorder(root, faults=full) as rec:
        fd = os.open(root / "x", os.O_WRONLY | os.O_CREAT, 0o600)
        assert os.write(fd, b"abcdef") == 3
        with pytest.raises(OSError) as raised:
            os.write(fd, b"def")
        assert raised.value.errno == errno.ENOSPC
        os.close(fd)
    assert (root / "x").read_bytes() == b"abc"
    assert [op.kind for op in rec.ops] == ["link", "write"]


def test_python_file_objects_and_sqlite_commits_are_recorded(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "root"
    root.mkdir()
    with Recorder(root) as rec:
        with open(root / "t.txt", "w") as f:
            f.write("hello")
            f.flush()
            os.fsync(f.fileno())
        db = sqlite3.connect(root / "s.db", isolation_level=None)
        db.execute("CREATE TABLE t (x)")
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("COMMIT")
        db.close()
    kinds = [op.kind for op in rec.ops]
    assert kinds[:3] == ["link", "write", "sync"]
    assert kinds.count("sqlite") >= 2
    last = [op for op in rec.ops if op.kind == "sqlite"][-1]
    mem = sqlite3.connect(":memory:")
    mem.deserialize(last.data)
    assert mem.execute("SELECT x FROM t").fetchall() == [(1,)]


def _ingest_like(root: Path, synchronous: str) -> Recorder:
    """Commit a row in WAL mode, then publish a file that says the row is stored."""
    import sqlite3

    db = sqlite3.connect(root / "store.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE reports (id TEXT)")
    db.close()
    with Recorder(root) as rec:
        db = sqlite3.connect(root / "store.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("BEGIN")
        db.execute("INSERT INTO reports VALUES ('r1')")
        db.execute("COMMIT")
        _write_file(root / "r1.receipt", b"receipt", sync=True, dirsync=True, atomic=True)
        rec.note("published")
        db.close()
    return rec


def _receipt_has_its_row(image: Path, point: CrashPoint) -> None:
    import sqlite3

    if ":main-only" in point.variant:
        return
    db = sqlite3.connect(image / "store.db")
    try:
        rows = db.execute("SELECT id FROM reports").fetchall()
    finally:
        db.close()
    if (image / "r1.receipt").exists():
        assert rows == [("r1",)], f"a receipt exists, the store holds {rows}"


def test_receipt_published_after_a_synchronous_normal_commit_can_outlive_it(
    tmp_path: Path,
) -> None:
    """The vendor store's bug of synchronous=NORMAL: the model must see it."""
    root = tmp_path / "root"
    root.mkdir()
    report = crash_images(_ingest_like(root, "NORMAL"), _receipt_has_its_row)
    assert any("lost1" in p.variant for p, _ in report.failures), report.summary()


def test_receipt_published_after_a_synchronous_full_commit_never_outlives_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    report = crash_images(_ingest_like(root, "FULL"), _receipt_has_its_row)
    assert not report.failures, report.summary()


def test_raw_sqlite_images_carry_the_wal_and_recover_from_it(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "root"
    root.mkdir()
    db = sqlite3.connect(root / "s.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.close()
    with Recorder(root) as rec:
        db = sqlite3.connect(root / "s.db", isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        for i in range(3):
            db.execute("INSERT INTO t VALUES (?)", (i,))
            rec.note(i)
        db.close()
    seen: dict[str, int] = {}

    def check(image: Path, point: CrashPoint) -> None:
        kind = point.variant.rpartition(":")[2] if point.variant.startswith("sqlite:") else ""
        if kind == "raw":
            assert (image / "s.db-wal").exists(), "a raw image without its -wal"
        if kind == "main-only":
            assert not (image / "s.db-wal").exists()
        seen[kind] = seen.get(kind, 0) + 1
        if kind == "main-only" or not (image / "s.db").exists():
            return
        db = sqlite3.connect(image / "s.db")
        try:
            have = [x for (x,) in db.execute("SELECT x FROM t")]
        finally:
            db.close()
        assert have[: len(point.notes)] == list(point.notes), (have, point.notes)

    report = crash_images(rec, check)
    assert not report.failures, report.summary()
    assert seen.get("raw", 0) >= 3 and seen.get("main-only", 0) >= 1, seen
