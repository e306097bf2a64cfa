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


def fold_epoch(folder: LedgerFolder, records: list[Record], *, starts_ledger: bool) -> str:
    """Restore ``folder`` from the last epoch's ``records`` (after its EPOCH record).

    Returns where the fold started: ``state`` (a STATE run), ``genesis`` (the epoch
    begins the ledger, so the state before it is empty) or ``partial`` (neither).
    A damaged STATE run is treated as absent: the records are authentic (the chain
    key opened them), so damage means a writer bug, and the folder's other base is
    the safer start.
    """
    parts: list[State] = []
    i = 0
    while i < len(records) and records[i].type == RecordType.STATE:
        try:
            parts.append(State.from_map(records[i].payload))
        except FormatError:
            parts = []
            break
        i += 1
    origin = "partial"
    state: State | None = None
    if parts:
        try:
            state = merge_states(parts)
            origin = "state"
        except FormatError:
            state = None
    if state is None and starts_ledger:
        state, origin = State(), "genesis"
    folder.restore(state)
    for record in records[i:]:
        if record.type != RecordType.STATE:
            folder.apply(record.type, record.payload, record.wall_ms, record.seq)
    return origin
