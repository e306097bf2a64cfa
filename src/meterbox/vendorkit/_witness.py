"""The vendor's check of witnessed heads (docs/spec/witness.md, docs/adr/0015). Pure.

A client that was given a ledger head hands it back with its next request, and the
server seals it: a WITNESS record when the head is one its ledger has, a
WITNESS_MISMATCH record when it is not (the server was restored from a copy or its
ledger cut back since). From the report's records alone:

* every WITNESS record names a head ``(seq, hash)``; when ``seq`` lies in the
  report, the chain's own hash at ``seq`` must be ``hash``, and a ``seq`` past the
  report's last record is a head this chain never reached. Either way the chain
  lacks a head a client was given: ``witness.head_missing`` (critical). A ``seq``
  before the report (already acknowledged) is checked against the acknowledged head
  when it is that head, and otherwise left alone: a receipt already fixed it;
* every WITNESS_MISMATCH record is ``witness.mismatch`` (critical).

Memory: 16 bytes per record of the report (a prefix of each chain hash; a chain
grown to match a witnessed prefix would need about 2^128 tries).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from meterbox.errors import FormatError
from meterbox.ledger import Finding, Head, Record, RecordType
from meterbox.ledger.records import Witness, WitnessMismatch

WITNESS_HEAD_MISSING: Final = "witness.head_missing"
WITNESS_MISMATCH: Final = "witness.mismatch"
_PREFIX: Final = 16
_UNSET: Final = bytes(_PREFIX)
#: Findings of one kind named one by one; the rest are counted in one more finding.
MAX_LISTED: Final = 20


@dataclass
class WitnessCheck:
    """Fed every record of a report with its chain hash, in order; then :meth:`findings`."""

    acknowledged: Head | None = None
    _first: int | None = None
    _hashes: bytearray = field(default_factory=bytearray)
    _witnessed: list[tuple[Record, Witness]] = field(default_factory=list)
    _mismatches: list[tuple[Record, WitnessMismatch]] = field(default_factory=list)
    _last: int = -1

    def add(self, record: Record, chain_hash: bytes | None) -> None:
        if chain_hash is not None:
            if self._first is None:
                self._first = record.seq
            at = (record.seq - self._first) * _PREFIX
            if at >= len(self._hashes):
                self._hashes += _UNSET * ((at - len(self._hashes)) // _PREFIX + 1)
            if at >= 0:
                self._hashes[at : at + _PREFIX] = chain_hash[:_PREFIX]
        self._last = max(self._last, record.seq)
        if record.type == RecordType.WITNESS:
            # An ill-formed payload witnesses nothing.
            with contextlib.suppress(FormatError):
                self._witnessed.append((record, Witness.from_map(record.payload)))
        elif record.type == RecordType.WITNESS_MISMATCH:
            try:
                found = WitnessMismatch.from_map(record.payload)
            except FormatError:
                found = WitnessMismatch(seq=-1, head_hash=b"", server_seq=-1, reason="unreadable")
            self._mismatches.append((record, found))

    def _hash_at(self, seq: int) -> bytes | None:
        if self._first is None or seq < self._first:
            return None
        at = (seq - self._first) * _PREFIX
        got = bytes(self._hashes[at : at + _PREFIX])
        return None if len(got) < _PREFIX or got == _UNSET else got

    def _lacks(self, w: Witness) -> str | None:
        """Why the chain lacks the witnessed head, or None if it has it (or cannot tell)."""
        if w.seq > self._last:
            return f"the chain ends at seq {self._last}"
        if self._first is not None and w.seq >= self._first:
            mine = self._hash_at(w.seq)
            if mine is None:
                return None  # that record is not authentic: the verifier says so already
            if mine != w.head_hash[:_PREFIX]:
                return f"the chain has {mine.hex()[:16]}... at seq {w.seq}"
            return None
        ack = self.acknowledged
        if ack is not None and ack.seq == w.seq and ack.hash != w.head_hash:
            return f"the acknowledged head at seq {w.seq} is {ack.hash.hex()[:16]}..."
        return None

    def findings(self) -> list[Finding]:
        out: list[Finding] = []
        missing = [(r, w, why) for r, w in self._witnessed if (why := self._lacks(w))]
        for r, w, why in missing[:MAX_LISTED]:
            out.append(
                Finding(
                    WITNESS_HEAD_MISSING,
                    "critical",
                    f"client {w.client_id or '(unnamed)'} was given ledger head "
                    f"{w.seq}:{w.head_hash.hex()[:16]}... and {why}: the ledger was "
                    "rewritten or cut back after the client saw it",
                    r.seq,
                )
            )
        for r, m in self._mismatches[:MAX_LISTED]:
            out.append(
                Finding(
                    WITNESS_MISMATCH,
                    "critical",
                    f"the server met client {m.client_id or '(unnamed)'} holding ledger head "
                    f"{m.seq}:{m.head_hash.hex()[:16]}... that it never had ({m.reason}; "
                    f"its own head was seq {m.server_seq}): the data directory was "
                    "restored from a copy or the ledger cut back",
                    r.seq,
                )
            )
        for code, items in ((WITNESS_HEAD_MISSING, missing), (WITNESS_MISMATCH, self._mismatches)):
            if len(items) > MAX_LISTED:
                out.append(
                    Finding(code, "critical", f"{len(items) - MAX_LISTED} more like the above")
                )
        return out


def witness_findings(
    records: Iterable[tuple[Record, bytes | None]], acknowledged: Head | None = None
) -> list[Finding]:
    """The witness findings of a report's ``(record, chain hash)`` pairs, in file order."""
    check = WitnessCheck(acknowledged)
    for record, chain_hash in records:
        check.add(record, chain_hash)
    return check.findings()


__all__ = ["WITNESS_HEAD_MISSING", "WITNESS_MISMATCH", "WitnessCheck", "witness_findings"]
