"""Durable, ordered usage spool in one SQLite file.

Invariants (see docs/adr/0005-client-spool.md):

- an event is written here, committed with ``synchronous=FULL`` in WAL mode, before
  the first attempt to send it; it is deleted only after the server acknowledged it
  (or after a local refusal was raised to the caller, for the event being recorded);
- events are delivered in ``id`` order; ``AUTOINCREMENT`` guarantees ids are never
  reused, so order survives deletions and restarts;
- an event the server refuses for good is moved, in one transaction, to the
  ``dead_letters`` table with the reason; nothing leaves the spool otherwise;
- retry state (attempt count, next attempt time, last error) is stored with the
  event, so backoff survives restarts;
- the ``heads`` table keeps, per server URL, the latest ledger head that server's
  acknowledgements carried (docs/spec/witness.md), each update one durable
  transaction; a head replaces the stored one only if it names another instance or
  a higher seq, so a server that went back in time keeps meeting the head it lost.
  The table was added without a schema version change: older spools gain it when
  opened, and older SDKs ignore it.

The connection is shared by threads behind a lock; SQLite's own file locking keeps
several processes on one file consistent.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from meterbox.client._core import DeadLetter, UsageEvent
from meterbox.client.errors import SpoolError
from meterbox.errors import FormatError
from meterbox.witness import WitnessHead

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    amount INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS heads (
    url TEXT PRIMARY KEY,
    instance TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    amount INTEGER NOT NULL,
    client_id TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    failed_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class SpooledEvent:
    """An event waiting in the spool, with its retry state."""

    id: int
    event: UsageEvent
    created_at: float
    attempts: int
    next_attempt_at: float
    last_error: str | None


class Spool:
    """The spool file. Open with ``Spool(path)``; close with :meth:`close`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so each change is
            # exactly one durable transaction.
            self._db = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: every commit is fsynced before it returns, so an acknowledged
            # write survives kill -9 and power loss.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
            if row is None:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif row[0] != str(SCHEMA_VERSION):
                self._db.close()
                raise SpoolError(
                    "Spool file has an unknown schema version",
                    expected=f"version {SCHEMA_VERSION}",
                    found=f"version {row[0]} in {self.path}",
                    hint="Use the meterbox version that wrote it to flush it, or another path",
                )
        except (sqlite3.Error, OSError) as exc:
            raise SpoolError(
                "Cannot open the usage spool",
                expected="a writable SQLite file",
                found=f"{self.path}: {exc}",
                hint="Set METERBOX_SPOOL or spool= to a writable path",
            ) from exc

    # -- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes

    def _write(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise SpoolError(
                    "Cannot write to the usage spool",
                    expected="a writable SQLite file",
                    found=f"{self.path}: {exc}",
                    hint="Check disk space and permissions",
                ) from exc

    def add(self, event: UsageEvent, now: float) -> int:
        """Store ``event`` durably and return its position. Re-adding a key is a no-op."""
        cur = self._write(
            "INSERT INTO events(meter, amount, client_id, idempotency_key, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(idempotency_key) DO NOTHING",
            (event.meter, event.amount, event.client_id, event.idempotency_key, now),
        )
        if cur.rowcount == 1 and cur.lastrowid is not None:
            return int(cur.lastrowid)
        row = self._read("SELECT id FROM events WHERE idempotency_key=?", (event.idempotency_key,))
        return int(row[0][0])

    def acknowledge(self, event_id: int) -> None:
        """The server has the event: forget it."""
        self._write("DELETE FROM events WHERE id=?", (event_id,))

    def schedule_retry(self, event_id: int, attempts: int, next_at: float, reason: str) -> None:
        self._write(
            "UPDATE events SET attempts=?, next_attempt_at=?, last_error=? WHERE id=?",
            (attempts, next_at, reason, event_id),
        )

    def dead_letter(self, event_id: int, code: str, reason: str, now: float) -> None:
        """Move an event to the dead-letter table in one transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT OR REPLACE INTO dead_letters(id, meter, amount, client_id, "
                    "idempotency_key, created_at, attempts, code, reason, failed_at) "
                    "SELECT id, meter, amount, client_id, idempotency_key, created_at, "
                    "attempts, ?, ?, ? FROM events WHERE id=?",
                    (code, reason, now, event_id),
                )
                self._db.execute("DELETE FROM events WHERE id=?", (event_id,))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise SpoolError(
                    "Cannot move an event to the dead-letter table",
                    expected="a writable SQLite file",
                    found=f"{self.path}: {exc}",
                    hint="Check disk space and permissions",
                ) from exc

    def requeue_dead_letters(self) -> int:
        """Put every dead letter back at the end of the queue (same keys, fresh retries).

        Use after fixing the cause (e.g. a top-up for a used-up quota). Requeued events
        are delivered after anything already waiting, so their order relative to
        newer events is not kept.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                cur = self._db.execute(
                    "INSERT INTO events(meter, amount, client_id, idempotency_key, created_at) "
                    "SELECT meter, amount, client_id, idempotency_key, created_at "
                    "FROM dead_letters ORDER BY id "
                    "ON CONFLICT(idempotency_key) DO NOTHING"
                )
                self._db.execute("DELETE FROM dead_letters")
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise SpoolError(
                    "Cannot requeue dead letters",
                    expected="a writable SQLite file",
                    found=f"{self.path}: {exc}",
                    hint="Check disk space and permissions",
                ) from exc
            return int(cur.rowcount)

    def keep_head(self, url: str, head: WitnessHead, now: float) -> bool:
        """Keep ``head`` as the latest for ``url`` if it is newer; True if it was stored."""
        cur = self._write(
            "INSERT INTO heads(url, instance, seq, hash, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(url) DO UPDATE SET instance=excluded.instance, seq=excluded.seq, "
            "hash=excluded.hash, updated_at=excluded.updated_at "
            "WHERE heads.instance != excluded.instance OR excluded.seq > heads.seq",
            (url, head.instance_id, head.seq, head.hash.hex(), now),
        )
        return cur.rowcount == 1

    # -- reads

    def head_for(self, url: str) -> WitnessHead | None:
        """The latest ledger head kept for ``url``, or None."""
        rows = self._read("SELECT instance, seq, hash FROM heads WHERE url=?", (url,))
        if not rows:
            return None
        instance, seq, hash_hex = rows[0]
        try:
            return WitnessHead(str(instance), int(seq), bytes.fromhex(str(hash_hex)))
        except (FormatError, ValueError):
            # An edited row is no witness; the next acknowledgement replaces it.
            return None

    def _read(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as exc:
                raise SpoolError(
                    "Cannot read the usage spool",
                    expected="a readable SQLite file",
                    found=f"{self.path}: {exc}",
                    hint="Check permissions, or move a damaged file aside",
                ) from exc

    @staticmethod
    def _row(row: tuple[Any, ...]) -> SpooledEvent:
        (eid, meter, amount, client_id, key, created, attempts, next_at, last_error) = row
        return SpooledEvent(
            id=int(eid),
            event=UsageEvent(str(meter), int(amount), str(client_id), str(key)),
            created_at=float(created),
            attempts=int(attempts),
            next_attempt_at=float(next_at),
            last_error=None if last_error is None else str(last_error),
        )

    _COLUMNS = (
        "id, meter, amount, client_id, idempotency_key, created_at, attempts, "
        "next_attempt_at, last_error"
    )

    def head(self) -> SpooledEvent | None:
        """The oldest waiting event, which must be delivered before any other."""
        rows = self._read(f"SELECT {self._COLUMNS} FROM events ORDER BY id LIMIT 1")  # noqa: S608
        return self._row(rows[0]) if rows else None

    def pending(self) -> list[SpooledEvent]:
        rows = self._read(f"SELECT {self._COLUMNS} FROM events ORDER BY id")  # noqa: S608
        return [self._row(r) for r in rows]

    def pending_count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM events")[0][0])

    def contains(self, event_id: int) -> bool:
        return bool(self._read("SELECT 1 FROM events WHERE id=?", (event_id,)))

    def dead_letters(self) -> list[DeadLetter]:
        rows = self._read(
            "SELECT id, meter, amount, client_id, idempotency_key, reason, code, failed_at "
            "FROM dead_letters ORDER BY id"
        )
        return [
            DeadLetter(
                id=int(r[0]),
                event=UsageEvent(str(r[1]), int(r[2]), str(r[3]), str(r[4])),
                reason=str(r[5]),
                code=str(r[6]),
                failed_at=float(r[7]),
            )
            for r in rows
        ]
