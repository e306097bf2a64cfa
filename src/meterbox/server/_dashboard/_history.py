"""Daily usage samples for the burn-down chart: one small SQLite file beside the state.

The state store keeps one counter per (license, meter, period), and the ledger is
sealed for the vendor, so neither says how a period's usage grew day by day. This
module keeps that: for each (license, meter, period, day) the highest ``used`` value
seen that day and when. It is read-only with respect to the license service (it only
calls ``engine.balances``) and loses nothing the service needs: deleting the file
only shortens the chart's history.

Samples are taken after state-changing requests, at most every
:attr:`UsageHistory.min_interval` seconds, and on every dashboard view, so a day's
value can lag the true end-of-day count by at most that interval.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from meterbox.server._state import from_us, to_us

HISTORY_DB: Final = "dashboard-history.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS daily (
    license_id TEXT NOT NULL, meter TEXT NOT NULL, period TEXT NOT NULL, day TEXT NOT NULL,
    at INTEGER NOT NULL, used INTEGER NOT NULL,
    PRIMARY KEY (license_id, meter, period, day));
"""

Key = tuple[str, str, str]


def period_label(balance: Mapping[str, Any]) -> str:
    """The period a balance row counts in: ``YYYY-MM`` for monthly meters, else ``total``."""
    start = balance.get("period_start")
    return "total" if not start else str(start)[:7]


class UsageHistory:
    """Per-day high-water marks of each meter's ``used`` counter."""

    def __init__(self, path: Path, *, min_interval: float = 5.0) -> None:
        self.path = path
        self.min_interval = min_interval
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        # A chart cache, not a record: losing the last samples to a power cut is harmless,
        # so it does not pay for an fsync per sample.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._last_sample: float | None = None
        self._last_values: dict[Key, int] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, now: datetime, balances: Iterable[Mapping[str, Any]]) -> int:
        """Store today's values; returns how many rows changed."""
        day = now.astimezone(UTC).date().isoformat()
        rows = []
        for b in balances:
            key = (str(b["license_id"]), str(b["meter"]), period_label(b))
            used = int(b["used"])
            if self._last_values.get(key) == used and self._last_values.get(key) is not None:
                continue
            self._last_values[key] = used
            rows.append((*key, day, to_us(now), used))
        if not rows:
            return 0
        with self._lock:
            self._db.executemany(
                "INSERT INTO daily(license_id, meter, period, day, at, used) VALUES (?,?,?,?,?,?) "
                "ON CONFLICT(license_id, meter, period, day) DO UPDATE SET "
                "used = max(used, excluded.used), at = max(at, excluded.at)",
                rows,
            )
        return len(rows)

    def due(self, mono: float) -> bool:
        """Whether a sample is due; if so, the interval starts again now."""
        if self._last_sample is not None and mono - self._last_sample < self.min_interval:
            return False
        self._last_sample = mono
        return True

    def samples(self, license_id: str, meter: str, period: str) -> list[tuple[datetime, int]]:
        """(time, used) of each day's last sample, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT at, used FROM daily WHERE license_id=? AND meter=? AND period=? "
                "ORDER BY day",
                (license_id, meter, period),
            ).fetchall()
        return [(from_us(int(at)), int(used)) for at, used in rows]
