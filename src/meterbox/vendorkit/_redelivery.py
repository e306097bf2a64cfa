"""One usage event billed once across the ledgers of a cluster (docs/adr/0033). No I/O.

A client that lost the answer to a usage request resends it, with the same idempotency
key, possibly to another node of the cluster. When the first node committed the event
before it could answer (killed, cut off), the event is on two ledgers. Each ledger is
honest about what its node recorded, so both copies are stored; the vendor bills one.

The rule (:func:`decide`), for usage rows that carry an idempotency key (field ``k``):

1. an event is ``(license_id, key)``: the server remembers keys per node regardless of
   meter, so one key names one event of a license;
2. the billed copy of an event is the first the vendor stored: a copy already billed
   by an earlier ingest stays billed, and within one ingest the copies are taken in
   ``(instance_id, seq)`` order. A statement once issued is therefore never changed by
   a later report;
3. every later copy is stored unbilled (``usage.billed`` false) and reported:
   ``usage.redelivered`` (info) when it is the same event (meter, kind and amount
   equal), ``usage.redelivered_mismatch`` (warning) when the same key came with a
   different meter, kind or amount: a client bug or a tampered client, billed once all
   the same, as first stored;
4. rows without a key are each billed, as before.

A row whose event has no other copy in the store is billed by the store in one
statement (the rule's trivial case: nearly every row, and no row in Python per row).
:func:`decide` is applied to the rest chunk by chunk, each chunk seeing the copies
billed so far (earlier reports and earlier chunks): the outcome is the same as one
call over the whole report (the property tests check it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from meterbox.ledger import Finding

USAGE_REDELIVERED: Final = "usage.redelivered"
USAGE_REDELIVERED_MISMATCH: Final = "usage.redelivered_mismatch"
#: Mismatched copies named one by one in the warning; the rest are counted.
MAX_EXAMPLES: Final = 5

Event = tuple[str, str]


@dataclass(frozen=True, slots=True)
class KeyedUsage:
    """One stored usage row that carries an idempotency key."""

    instance_id: str
    seq: int
    license_id: str
    key: str
    meter: str
    kind: str
    amount: int

    @property
    def event(self) -> Event:
        return (self.license_id, self.key)

    def same_request(self, other: KeyedUsage) -> bool:
        """Whether ``other`` carries the same meter, kind and amount (a true redelivery)."""
        return (self.meter, self.kind, self.amount) == (other.meter, other.kind, other.amount)

    def short(self) -> str:
        what = f"{self.kind} {self.meter} {self.amount}"
        return f"instance {self.instance_id[:16]} seq {self.seq} ({what})"


@dataclass(frozen=True, slots=True)
class Redelivered:
    """A copy of an event that is already billed: stored, not billed."""

    copy: KeyedUsage
    billed: KeyedUsage

    @property
    def mismatch(self) -> bool:
        return not self.copy.same_request(self.billed)


@dataclass(frozen=True, slots=True)
class Decision:
    """The rows to bill and the redelivered copies, for one chunk of rows."""

    bill: tuple[KeyedUsage, ...]
    redelivered: tuple[Redelivered, ...]


def decide(billed: Mapping[Event, KeyedUsage], rows: Iterable[KeyedUsage]) -> Decision:
    """Which of ``rows`` to bill, given the copies already ``billed`` (see module docstring)."""
    seen = dict(billed)
    bill: list[KeyedUsage] = []
    again: list[Redelivered] = []
    for row in sorted(rows, key=lambda r: (r.instance_id, r.seq)):
        first = seen.get(row.event)
        if first is None:
            seen[row.event] = row
            bill.append(row)
        elif (first.instance_id, first.seq) != (row.instance_id, row.seq):
            again.append(Redelivered(row, first))
    return Decision(tuple(bill), tuple(again))


@dataclass
class Tally:
    """What the findings of one report say about its redelivered copies."""

    same: int = 0
    units: int = 0
    nodes: set[str] = field(default_factory=set)
    first_seq: int | None = None
    mismatched: list[Redelivered] = field(default_factory=list)
    mismatches: int = 0

    def add(self, found: Sequence[Redelivered]) -> None:
        for r in found:
            self.nodes.add(r.billed.instance_id)
            if r.mismatch:
                self.mismatches += 1
                if len(self.mismatched) < MAX_EXAMPLES:
                    self.mismatched.append(r)
            else:
                self.same += 1
                self.units += r.copy.amount
                if self.first_seq is None or r.copy.seq < self.first_seq:
                    self.first_seq = r.copy.seq

    def findings(self) -> list[Finding]:
        out: list[Finding] = []
        nodes = ", ".join(sorted(n[:16] for n in self.nodes))
        if self.same:
            out.append(
                Finding(
                    USAGE_REDELIVERED,
                    "info",
                    f"{self.same:,} usage events ({self.units:,} units) were already recorded "
                    f"under the same idempotency key (instances {nodes}): a client resent "
                    "them after a lost answer; stored, not billed again",
                    self.first_seq,
                )
            )
        if self.mismatches:
            examples = "; ".join(
                f"key {r.copy.key[:40]!r}: {r.copy.short()} vs billed {r.billed.short()}"
                for r in self.mismatched
            )
            more = self.mismatches - len(self.mismatched)
            tail = f"; and {more:,} more" if more else ""
            out.append(
                Finding(
                    USAGE_REDELIVERED_MISMATCH,
                    "warning",
                    f"{self.mismatches:,} usage events reuse the idempotency key of an event "
                    "recorded with another meter, kind or amount; each is billed once, as "
                    f"first recorded: {examples}{tail}",
                    self.mismatched[0].copy.seq,
                )
            )
        return out
