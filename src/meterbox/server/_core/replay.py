"""Re-apply ledger records that the state store missed in a crash. Pure.

A request is acknowledged only after its ledger record is durable *and* its state
change is committed. A crash between the two leaves a record in the ledger that the
local counters and idempotency keys do not know: the client was never answered, so
it retries with the same idempotency key -- and without this replay the retry would
be recorded a second time. On start-up the server hands every record after the
state's last sequence number that the ledger can still open (the last epoch) to
:func:`replay_changes`, and commits the result before serving. Requests commit to
the state out of seq order, so that number is a watermark and the state also names
the seqs after it already committed (ADR 0044); those are skipped.

Only usage is replayed: an unanswered seat checkout or top-up import leaves no
obligation (the client retries and gets a fresh decision), while usage carries an
idempotency key the client will present again.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime

from meterbox.errors import FormatError
from meterbox.ledger import Record, RecordType
from meterbox.ledger.records import Usage
from meterbox.server._core.changes import Change, IdemPut, SeqMax, UsageDelta
from meterbox.server._core.meters import IdemEntry, UsageKind, UsageResult, fingerprint, period_key
from meterbox.server._core.policy import LicensePolicy


def replay_changes(
    records: Iterable[Record],
    *,
    usage: Mapping[tuple[str, str, str], int],
    idempotency_keys: Iterable[str],
    licenses: Mapping[str, LicensePolicy],
    committed: Collection[int] = frozenset(),
) -> list[Change]:
    """``committed``: the seqs after the state's last seq whose change the state holds
    already (``seq_ahead``, ADR 0044); they are not applied a second time."""
    used = dict(usage)
    known = set(idempotency_keys)
    changes: list[Change] = []
    last = None
    for record in records:
        last = record.seq
        if record.type not in (RecordType.USAGE, RecordType.USAGE_DECREMENT):
            continue
        if record.seq in committed:
            continue
        change = _usage(record, used, known, licenses)
        if change is not None:
            changes.extend(change)
    if last is not None:
        changes.append(SeqMax(last))
    return changes


def _usage(
    record: Record,
    used: dict[tuple[str, str, str], int],
    known: set[str],
    licenses: Mapping[str, LicensePolicy],
) -> list[Change] | None:
    try:
        usage = Usage.from_map(record.payload)
    except FormatError:
        return None  # not a payload this server wrote: nothing it could owe a client
    lid, meter, amount, key = usage.license_id, usage.meter, usage.amount, usage.idempotency_key
    if lid is None:
        return None
    if key is not None and key in known:
        return None  # already applied: the crash came after the state commit
    policy = licenses.get(lid)
    if policy is None or meter not in policy.meters:
        return None
    at = datetime.fromtimestamp(record.wall_ms / 1000, UTC)
    period = period_key(policy.meters[meter].period, at)
    slot = (lid, meter, period)
    before = used.get(slot, 0)
    decrement = record.type == RecordType.USAGE_DECREMENT
    delta = -min(amount, before) if decrement else amount
    used[slot] = before + delta
    out: list[Change] = [UsageDelta(lid, meter, period, delta)]
    if key is not None:
        known.add(key)
        kind: UsageKind = "usage.decrement" if decrement else "usage"
        client_id = usage.client_id or ""
        result = UsageResult(
            kind=kind,
            meter=meter,
            amount=amount,
            client_id=client_id,
            license_id=lid,
            period=period,
            used=used[slot],
            limit=policy.meters[meter].limit,
            flagged=usage.flagged,
            seq=record.seq,
            idempotency_key=key,
        )
        out.append(IdemPut(key, IdemEntry(fingerprint(kind, meter, amount, client_id), at, result)))
    return out
