"""The site administrator's activity log: who had which seat, as JSON lines.

``DATA/activity.jsonl`` (or a path from ``activity_log`` in the settings), one JSON
object per line: checkouts, renewals (coalesced as the ledger coalesces them), releases,
expiries, removals, denials with their reason, queue events, and licenses loaded. For
chargeback and "who had the seat at 10:00"; **not** the billing source of truth: the
customer can edit or delete it, and the vendor bills from the sealed ledger only.

The file is rotated when it passes ``max_bytes`` or when its first entry is older than
``max_age``: ``activity.jsonl`` becomes ``activity.jsonl.1`` (and ``.1`` becomes ``.2``,
up to ``keep`` files). Lines are appended without ``fsync``: a crash may lose the last
lines, never the ledger's records. Lease ids are bearer secrets, so only their first 8
characters are written (enough to tell leases apart in the log).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final

from meterbox.server._core.seats import SeatLease

ACTIVITY_FILE: Final = "activity.jsonl"
#: Columns of ``meterbox server activity --format csv``, in order.
COLUMNS: Final = (
    "time", "event", "feature", "client_id", "user", "host", "group", "lease", "reason",
)  # fmt: skip
LEASE_PREFIX: Final = 8

log = logging.getLogger("meterbox.server")


@dataclass(frozen=True)
class ActivityConfig:
    max_bytes: int = 16 << 20
    max_age: timedelta = timedelta(days=7)
    keep: int = 8


def lease_fields(lease: SeatLease) -> dict[str, Any]:
    return {
        "feature": lease.feature,
        "client_id": lease.client_id,
        "user": lease.user,
        "host": lease.hostname,
        "group": lease.group,
        "lease": lease.lease_id[:LEASE_PREFIX],
    }


class ActivityLog:
    """Appends entries to the current file and rotates it; never raises into a request."""

    def __init__(self, path: Path, config: ActivityConfig = ActivityConfig()) -> None:
        self.path = path
        self.config = config
        self._file: IO[str] | None = None
        self._size = 0
        self._first: datetime | None = None

    def _open(self) -> IO[str]:
        if self._file is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
            self._size = self.path.stat().st_size
            self._first = _first_time(self.path) if self._size else None
        return self._file

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for i in range(self.config.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.path.exists():
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._first = None

    def write(self, at: datetime, event: str, **fields: Any) -> None:
        entry = {"time": at.isoformat(), "event": event}
        entry.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(entry, sort_keys=False) + "\n"
        try:
            self._open()
            too_big = self._size + len(line) > self.config.max_bytes
            too_old = self._first is not None and at - self._first > self.config.max_age
            if self._size and (too_big or too_old):
                self._rotate()
            f = self._open()
            f.write(line)
            self._size += len(line)
            if self._first is None:
                self._first = at
        except OSError as exc:
            # The activity log is the admin's convenience: a full disk must not fail a
            # checkout the ledger has already recorded.
            log.warning("activity log not written: %s", exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _first_time(path: Path) -> datetime | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError), path.open() as f:
        return datetime.fromisoformat(json.loads(f.readline())["time"])
    return None


# --------------------------------------------------------------------- reading
def files(path: Path) -> list[Path]:
    """The current file and its rotated predecessors, oldest first."""
    rotated = sorted(
        (p for p in path.parent.glob(f"{path.name}.*") if p.suffix.lstrip(".").isdigit()),
        key=lambda p: -int(p.suffix.lstrip(".")),
    )
    return [*rotated, *([path] if path.exists() else [])]


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every entry, oldest first; a line that is not an entry (a torn last line) is skipped."""
    for p in files(path):
        with p.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and isinstance(entry.get("time"), str):
                        yield entry


def select(
    entries: Iterable[Mapping[str, Any]],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    **equal: str | None,
) -> Iterator[Mapping[str, Any]]:
    """Entries in ``[since, until)`` whose fields equal every given filter."""
    wanted = {k: v for k, v in equal.items() if v is not None}
    for e in entries:
        try:
            at = datetime.fromisoformat(e["time"])
        except ValueError:
            continue
        if (since is not None and at < since) or (until is not None and at >= until):
            continue
        if all(e.get(k) == v for k, v in wanted.items()):
            yield e


def to_csv(entries: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for e in entries:
        w.writerow(["" if e.get(c) is None else e.get(c) for c in COLUMNS])
    return out.getvalue()


__all__ = [
    "ACTIVITY_FILE",
    "COLUMNS",
    "ActivityConfig",
    "ActivityLog",
    "files",
    "lease_fields",
    "read",
    "select",
    "to_csv",
]
