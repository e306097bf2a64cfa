"""Clients as witnesses of the ledger head (docs/spec/witness.md, docs/adr/0015). No I/O.

The server hands out its durable head with every acknowledgement; a client hands the
latest one back with its next request. :class:`WitnessDesk` judges such a head
against what this ledger has and says which records to seal:

* a head this ledger has, new for that client: one WITNESS record (so the vendor can
  check it against the reported chain);
* a head this ledger never had (its seq is past the head, or the ledger has that seq
  with another chain hash): one WITNESS_MISMATCH record, at once. The ledger was
  restored from a copy or cut back since the client was given the head.

Invariants:

* at most one WITNESS per client and new head (a head at or below the last one sealed
  for that client seals nothing), and no more than one per client every
  ``seal_every_ms`` of monotonic time; at most one WITNESS_MISMATCH per client and
  witnessed head, so a client repeating itself cannot fill the ledger. Every
  witness is judged, sealed or not: the throttle costs the vendor samples, never the
  server's detection;
* memory is bounded: the index of known heads, the per-client table and the set of
  mismatches already sealed each keep at most their configured number of entries;
* a head the index cannot settle (older than the index, never handed out since the
  start) is :attr:`Verdict.UNKNOWN`; the shell then looks it up in the ledger file
  and calls :meth:`WitnessDesk.learn` with the answer.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meterbox.ledger.records import Witness, WitnessMismatch
from meterbox.witness import WitnessHead


@dataclass(frozen=True)
class WitnessConfig:
    """Bounds of the witness desk's memory."""

    #: Recent heads (seq -> chain hash) kept to judge witnesses without reading the file.
    index_size: int = 65_536
    #: Clients whose last sealed witness is remembered.
    clients: int = 100_000
    #: Mismatching (client, head) pairs remembered, so each is sealed once.
    mismatches: int = 10_000
    #: Least monotonic time between two WITNESS records of one client (0: every new head).
    seal_every_ms: int = 10_000


class Verdict(enum.Enum):
    MATCH = "match"
    #: The witnessed seq is past this ledger's head.
    AHEAD = "ahead"
    #: This ledger has the seq, with another chain hash.
    DIFFERS = "differs"
    #: The head names another instance (the client talked to another server at this URL).
    FOREIGN = "foreign"
    #: Not settled by the index: the ledger file must be read.
    UNKNOWN = "unknown"
    #: Not settled and not looked up (a look-up was already running, or the sink cannot
    #: read its file back): sealed for the vendor to check against the chain.
    UNCHECKED = "unchecked"


MISMATCHES = frozenset({Verdict.AHEAD, Verdict.DIFFERS})


class _Bounded(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class WitnessDesk:
    """Judges witnessed heads for one instance and decides what to seal."""

    def __init__(self, instance_id: str, config: WitnessConfig = WitnessConfig()) -> None:
        self.instance_id = instance_id
        self.config = config
        self._index = _Bounded(config.index_size)
        self._last = _Bounded(config.clients)
        self._mismatched = _Bounded(config.mismatches)
        #: Heads the ledger file was asked about and does not have.
        self._bad = _Bounded(config.mismatches)
        self.mismatches = 0
        self.witnesses = 0
        self.foreign = 0
        self.last_mismatch: dict[str, Any] | None = None

    # ----------------------------------------------------------- the index
    def seed(self, heads: Iterable[tuple[int, bytes]]) -> None:
        """Heads of the ledger as it stands at open (oldest first)."""
        for seq, h in heads:
            self._index.put(seq, h)

    def given(self, seq: int, head_hash: bytes) -> None:
        """A head handed out to a client."""
        self._index.put(seq, head_hash)

    def learn(self, head: WitnessHead, has_it: bool) -> Verdict:
        """The ledger file's answer for a head the index could not settle."""
        if has_it:
            self._index.put(head.seq, head.hash)
            return Verdict.MATCH
        self._bad.put((head.seq, head.hash), True)
        return Verdict.DIFFERS

    # ------------------------------------------------------------- judging
    def judge(self, head: WitnessHead, current_seq: int, current_hash: bytes) -> Verdict:
        if head.instance_id != self.instance_id:
            return Verdict.FOREIGN
        if head.seq > current_seq:
            return Verdict.AHEAD
        if head.seq == current_seq:
            return Verdict.MATCH if head.hash == current_hash else Verdict.DIFFERS
        known = self._index.get(head.seq)
        if known is None:
            return Verdict.DIFFERS if (head.seq, head.hash) in self._bad else Verdict.UNKNOWN
        return Verdict.MATCH if known == head.hash else Verdict.DIFFERS

    def settle(
        self,
        client_id: str | None,
        head: WitnessHead,
        verdict: Verdict,
        server_seq: int,
        mono_ms: int = 0,
    ) -> Witness | WitnessMismatch | None:
        """The record to seal for this witness, if any (see the module's invariants)."""
        if verdict is Verdict.FOREIGN:
            self.foreign += 1
            return None
        if verdict in MISMATCHES:
            key = (client_id, head.seq, head.hash)
            if key in self._mismatched:
                return None
            self._mismatched.put(key, True)
            self.mismatches += 1
            self.last_mismatch = {
                "client_id": client_id,
                "witnessed_seq": head.seq,
                "witnessed_hash": head.hash.hex(),
                "server_seq": server_seq,
                "reason": verdict.value,
            }
            return WitnessMismatch(
                client_id=client_id,
                seq=head.seq,
                head_hash=head.hash,
                server_seq=server_seq,
                reason=verdict.value,
            )
        last = self._last.get(client_id)
        if last is not None:
            last_seq, last_ms = last
            # An unchecked head is always sealed: the vendor's check is then its only one.
            soon = (
                verdict is not Verdict.UNCHECKED and mono_ms - last_ms < self.config.seal_every_ms
            )
            if head.seq <= last_seq or soon:
                return None
        self._last.put(client_id, (head.seq, mono_ms))
        self.witnesses += 1
        return Witness(client_id=client_id, seq=head.seq, head_hash=head.hash)

    def status(self) -> dict[str, Any]:
        return {
            "witnesses_sealed": self.witnesses,
            "mismatches": self.mismatches,
            "last_mismatch": self.last_mismatch,
        }


__all__ = ["MISMATCHES", "Verdict", "WitnessConfig", "WitnessDesk"]
