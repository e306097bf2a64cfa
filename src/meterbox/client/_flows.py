"""Usage delivery as generators: the one place spool and protocol meet.

Each flow is a generator that yields :class:`Request` objects and is sent back the
:class:`Outcome` of each; the sync client drives it with blocking calls, the async
client with ``await``. The flows touch the spool (local SQLite, short fsynced
transactions) but never the network, a clock or a random source of their own.

Ordering invariant: the spool head is always sent first, and a pass stops at the
first transient failure, so no event overtakes an earlier one.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from meterbox.client._core import (
    DeadLetter,
    Delivered,
    FlushResult,
    NowFn,
    RandFn,
    RecordResult,
    Rejected,
    Request,
    RetryConfig,
    Transient,
    UsageEvent,
    UsageReceipt,
    classify_delivery,
    usage_request,
    validate_usage,
)
from meterbox.client._spool import Spool
from meterbox.errors import MeterboxError


@dataclass
class _Drain:
    delivered: int
    dead_letters: list[DeadLetter]
    stopped: str | None
    own_receipt: UsageReceipt | None
    own_error: MeterboxError | None


def _drain(
    spool: Spool,
    policy: RetryConfig,
    now: NowFn,
    rand: RandFn,
    *,
    force: bool,
    own: int | None,
) -> Generator[Request, object, _Drain]:
    """Send spooled events in order until the spool is empty, ``own`` is done, or a send fails.

    ``own`` is the event the caller is recording right now: a refusal of it is handed
    back to be raised (it is removed from the spool, never dead-lettered), while a
    refusal of an earlier event dead-letters that event and the pass goes on.
    """
    out = _Drain(0, [], None, None, None)
    while True:
        head = spool.head()
        if head is None:
            return out
        t = now()
        if not force and head.next_attempt_at > t:
            out.stopped = (
                f"waiting {head.next_attempt_at - t:.1f} s before retry "
                f"{head.attempts + 1} (last error: {head.last_error})"
            )
            return out
        if policy.max_age_seconds is not None and t - head.created_at > policy.max_age_seconds:
            # Past the server's idempotency window a resend might be applied twice, and
            # the first send might have been applied: only a person can tell. Keep it.
            reason = (
                f"waited {(t - head.created_at) / 3600:.1f} h, longer than "
                f"{policy.max_age_seconds / 3600:.1f} h; the server may have forgotten its "
                "idempotency key, so it was not resent. Check the server's usage before "
                "requeueing it"
            )
            spool.dead_letter(head.id, "too_old", reason, t)
            out.dead_letters.append(DeadLetter(head.id, head.event, reason, "too_old", t))
            continue
        outcome = yield usage_request(head.event)
        decision = classify_delivery(outcome)  # type: ignore[arg-type]
        if isinstance(decision, Delivered):
            spool.acknowledge(head.id)
            out.delivered += 1
            if head.id == own:
                out.own_receipt = decision.receipt
                return out
            continue
        if isinstance(decision, Rejected):
            if head.id == own:
                spool.acknowledge(head.id)
                out.own_error = decision.error
                return out
            reason = str(decision.error)
            spool.dead_letter(head.id, decision.error.code, reason, t)
            out.dead_letters.append(DeadLetter(head.id, head.event, reason, decision.error.code, t))
            continue
        assert isinstance(decision, Transient)
        attempts = head.attempts + 1
        if policy.max_attempts is not None and attempts >= policy.max_attempts:
            reason = f"retry budget exhausted after {attempts} attempts: {decision.reason}"
            spool.dead_letter(head.id, "retry_budget", reason, t)
            out.dead_letters.append(DeadLetter(head.id, head.event, reason, "retry_budget", t))
            continue
        spool.schedule_retry(head.id, attempts, t + policy.delay(attempts, rand()), decision.reason)
        out.stopped = f"server unreachable: {decision.reason}"
        return out


def record_flow(
    spool: Spool,
    policy: RetryConfig,
    now: NowFn,
    rand: RandFn,
    event: UsageEvent,
) -> Generator[Request, object, RecordResult]:
    """Write ``event`` ahead to the spool, then deliver everything up to and including it.

    Returns ``spooled=True`` when it could not be delivered now; raises the server's
    refusal (quota used up, unknown meter, bad request) without keeping the event.
    """
    validate_usage(event.meter, event.amount, event.idempotency_key)
    own = spool.add(event, now())
    result = yield from _drain(spool, policy, now, rand, force=False, own=own)
    if result.own_error is not None:
        raise result.own_error
    if result.own_receipt is not None:
        return RecordResult(event.idempotency_key, spooled=False, receipt=result.own_receipt)
    if not spool.contains(own):
        # Another process sharing this spool delivered it between our passes.
        return RecordResult(event.idempotency_key, spooled=False, receipt=None)
    return RecordResult(event.idempotency_key, spooled=True, receipt=None)


def flush_flow(
    spool: Spool, policy: RetryConfig, now: NowFn, rand: RandFn, *, force: bool
) -> Generator[Request, object, FlushResult]:
    """One delivery pass over the spool; ``force`` ignores the backoff schedule."""
    result = yield from _drain(spool, policy, now, rand, force=force, own=None)
    return FlushResult(
        delivered=result.delivered,
        pending=spool.pending_count(),
        dead_letters=tuple(result.dead_letters),
        stopped=result.stopped,
    )
