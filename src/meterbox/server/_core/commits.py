"""Which durable records have their state change committed: the state's watermark.

Requests commit to ``state.db`` out of seq order: a request may wait between its
ledger commit and its state commit (for the service lock, or for a cluster's
idempotency key to be published), so a later record's change can land first. The
state's ``last_seq`` must never claim a record whose change it does not hold, or a
crash at that moment reads as an edit at the next open (docs/adr/0044).

:class:`CommitMarks` keeps the seqs made durable and not yet committed
(``durable``), and at each state commit (``commit``) gives the watermark -- every
record at or before it committed, or needing no state change -- and the committed
seqs above it. Pure but for a lock: the ledger's committer thread tells it of
durable records, the event loop of commits; time is passed in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Final

from meterbox.server._core.changes import SeqMax

#: How long a durable record may wait for its state commit before the watermark
#: moves over it (its request failed after the ledger commit).
PENDING_HOLD_S: Final = 10.0
#: At most this many committed seqs are kept above the watermark.
MAX_AHEAD: Final = 1024


class CommitMarks:
    """The watermark of the state commits (see module docs)."""

    def __init__(self, *, hold_s: float = PENDING_HOLD_S, max_ahead: int = MAX_AHEAD) -> None:
        self.hold_s = hold_s
        self.max_ahead = max_ahead
        self._lock = threading.Lock()
        #: seq -> when it was made durable (monotonic seconds)
        self._pending: dict[int, float] = {}
        self._ahead: set[int] = set()
        self._high = 0
        self._mark = 0

    def durable(self, seq: int, now: float) -> None:
        """Record ``seq`` is durable and its state change not committed yet."""
        with self._lock:
            if seq > self._mark and seq not in self._ahead:
                self._pending.setdefault(seq, now)

    def commit(self, seqs: Iterable[int], now: float) -> SeqMax | None:
        """The state commit of ``seqs``' changes: the watermark it carries (None if
        ``seqs`` is empty and nothing moved)."""
        done = list(seqs)
        with self._lock:
            for s in done:
                self._pending.pop(s, None)
                if s > self._mark:
                    self._ahead.add(s)
                self._high = max(self._high, s)
            stale = [s for s, t in self._pending.items() if now - t > self.hold_s]
            for s in stale:
                del self._pending[s]
            if not done and not stale:
                return None
            mark = self._high if not self._pending else min(self._high, min(self._pending) - 1)
            self._mark = max(self._mark, mark)
            self._ahead = {s for s in self._ahead if s > self._mark}
            if len(self._ahead) > self.max_ahead:
                # A record that waits this long holds the watermark no more.
                self._pending.clear()
                self._mark = self._high
                self._ahead.clear()
            return SeqMax(self._mark, tuple(sorted(self._ahead)))

    @property
    def pending(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._pending)
