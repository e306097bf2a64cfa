"""The fold: how a ledger's owner keeps a state that the ledger alone can rebuild.

The ledger knows nothing of seats or meters. Its owner (the server) hands the writer
a :class:`LedgerFolder`; the writer then

* calls :meth:`LedgerFolder.apply` for every record it makes durable, in commit
  order, after the batch holding it is synced (never for a record that failed);
* writes :meth:`LedgerFolder.snapshot` as a STATE record (a run of them when it is
  large) right after every EPOCH record, in the same durable write;
* at open, before anything new is written, calls :meth:`LedgerFolder.restore` with
  the STATE of the ledger's last epoch and then ``apply`` for every later record of
  that epoch, which the server's own chain key still opens.

So the folder's state at any moment is a pure function of the ledger, and a cache
file that says otherwise can be told apart and rebuilt (docs/adr/0014).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from meterbox.errors import FormatError
from meterbox.ledger._format import RecordType
from meterbox.ledger._frames import Record
from meterbox.ledger.records import State, merge_states


@runtime_checkable
class LedgerFolder(Protocol):
    """What the writer calls; implementations must not raise (the writer ignores them)."""

    def apply(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int, seq: int) -> None:
        """Fold one durable record into the state."""

    def snapshot(self) -> State:
        """The state as of the last record applied, for a STATE record."""

    def restore(self, state: State | None) -> None:
        """Start over from ``state``.

        ``None`` means the epoch holds no STATE record and does not start the ledger
        (a ledger written before STATE records existed): the folder then has to take
        its base from elsewhere, and the records that follow are applied on top.
        """


class EpochFold:
    """Streams one ledger walk into a folder, restarting at every EPOCH record it opens.

    The recovery scan calls :meth:`epoch` for each EPOCH record of an epoch the
    server's key reaches and :meth:`record` for each opened record after it, only
    once the frame is known good; :meth:`finish` ends the walk. Only the last epoch's
    fold survives (each EPOCH restarts it), and memory stays constant whatever the
    epoch's length: records are folded as they are read, never kept.
    """

    def __init__(self, folder: LedgerFolder) -> None:
        self.folder = folder
        self.origin: str | None = None
        self.last_type: RecordType | None = None
        self._parts: list[State] | None = None
        self._starts_ledger = False
        self._damaged = False
        #: An earlier epoch of this walk was folded from a known start.
        self._folded = False

    def epoch(self, seq: int) -> None:
        self._parts, self._starts_ledger, self._damaged = [], seq == 0, False
        self.origin = None
        self.last_type = RecordType.EPOCH

    def record(self, record: Record) -> None:
        self.last_type = record.type
        if self._parts is not None and record.type == RecordType.STATE and not self._damaged:
            try:
                self._parts.append(State.from_map(record.payload))
            except FormatError:
                self._damaged = True
            return
        self._start()
        if record.type != RecordType.STATE:
            self.folder.apply(record.type, record.payload, record.wall_ms, record.seq)

    def finish(self) -> str | None:
        self._start()
        return self.origin

    def _start(self) -> None:
        """Restore the folder from the STATE run just read (once per epoch)."""
        if self._parts is None:
            return
        parts, self._parts = self._parts, None
        state: State | None = None
        self.origin = "partial"
        if parts and not self._damaged:
            try:
                state, self.origin = merge_states(parts), "state"
            except FormatError:
                # Authentic but unreadable: a writer bug, not an attack (the chain key
                # opened it); the folder's other base is the safer start.
                state = None
        if state is None and self._starts_ledger:
            state, self.origin = State(), "genesis"
        if state is None and self._folded:
            # The epoch before was folded in this walk and its end is exactly where
            # this epoch's missing STATE would have started: carry on from it.
            self.origin = "continued"
            return
        self._folded = self.origin in ("state", "genesis")
        self.folder.restore(state)


def fold_epoch(folder: LedgerFolder, records: list[Record], *, starts_ledger: bool) -> str:
    """Fold one epoch's ``records`` (those after its EPOCH record) into ``folder``.

    Returns where the fold started: ``state`` (a STATE run), ``genesis`` (the epoch
    begins the ledger, so the state before it is empty) or ``partial`` (neither).
    """
    walk = EpochFold(folder)
    walk.epoch(0 if starts_ledger else 1)
    for record in records:
        walk.record(record)
    return walk.finish() or "partial"
