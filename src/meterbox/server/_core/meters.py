"""Metered usage against prepaid limits: pure bookkeeping, no I/O, time passed in.

Counters are kept per (license, meter, period) where the period key is ``"total"``
or the calendar month in UTC (``"2025-03"``). A meter's limit in a period is the
license limit plus the top-ups applied to that (license, meter, period).

Invariants:

* under ``over_limit="refuse"`` the counted usage of a (license, meter, period)
  never exceeds its limit; under ``"allow"`` it may, and every charge past the
  limit is flagged;
* counted usage never goes below zero (decrements are clamped);
* a top-up id is applied at most once;
* an idempotency key maps to exactly one request; its answer is replayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from meterbox.errors import QuotaExceeded
from meterbox.ledger.records import Usage, UsageDecrement
from meterbox.server._core.policy import MeterPolicy
from meterbox.server._errors import IdempotencyConflictError, TopupAlreadyAppliedError

UsageKind = Literal["usage", "usage.decrement"]

#: How long an idempotency key is remembered; a retry after that is a new request.
IDEMPOTENCY_TTL = timedelta(days=7)


def period_key(policy_period: str, now: datetime) -> str:
    return "total" if policy_period == "total" else now.astimezone(UTC).strftime("%Y-%m")


def period_start(key: str) -> datetime | None:
    if key == "total":
        return None
    year, month = key.split("-")
    return datetime(int(year), int(month), 1, tzinfo=UTC)


@dataclass(frozen=True)
class UsageResult:
    """The answer to one usage request, as sent to the client and replayed on retry."""

    kind: UsageKind
    meter: str
    amount: int
    client_id: str
    license_id: str
    period: str
    used: int
    limit: int | None
    flagged: bool
    seq: int | None = None
    replayed: bool = False
    idempotency_key: str | None = None

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)

    def record(self) -> Usage:
        """The ledger record of this request (a :class:`UsageDecrement` for a decrement)."""
        cls = UsageDecrement if self.kind == "usage.decrement" else Usage
        return cls(
            meter=self.meter,
            amount=self.amount,
            client_id=self.client_id,
            license_id=self.license_id,
            idempotency_key=self.idempotency_key,
            flagged=self.flagged,
        )

    def payload(self) -> dict[str, Any]:
        """Compact ledger payload (well under 60 bytes of msgpack for typical names)."""
        return self.record().to_map()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "meter": self.meter,
            "amount": self.amount,
            "client_id": self.client_id,
            "license_id": self.license_id,
            "period": self.period,
            "used": self.used,
            "limit": self.limit,
            "flagged": self.flagged,
            "seq": self.seq,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UsageResult:
        return cls(
            kind=d["kind"],
            meter=d["meter"],
            amount=int(d["amount"]),
            client_id=d["client_id"],
            license_id=d["license_id"],
            period=d["period"],
            used=int(d["used"]),
            limit=None if d["limit"] is None else int(d["limit"]),
            flagged=bool(d["flagged"]),
            seq=None if d["seq"] is None else int(d["seq"]),
            idempotency_key=d.get("idempotency_key"),
        )


@dataclass(frozen=True)
class IdemEntry:
    fingerprint: str
    created_at: datetime
    result: UsageResult


@dataclass(frozen=True)
class AppliedTopup:
    """A top-up file the server has applied: the meter it raised, by how much, and when."""

    topup_id: str
    license_id: str
    meter: str
    amount: int
    period: str
    applied_at: datetime


def fingerprint(kind: str, meter: str, amount: int, client_id: str) -> str:
    return f"{kind}\x1f{meter}\x1f{amount}\x1f{client_id}"


class MeterBook:
    """Usage counters, applied top-ups and remembered idempotency keys."""

    def __init__(
        self,
        usage: dict[tuple[str, str, str], int] | None = None,
        topups: Iterable[AppliedTopup] = (),
        idempotency: dict[str, IdemEntry] | None = None,
    ) -> None:
        self.usage: dict[tuple[str, str, str], int] = dict(usage or {})
        self.topups: dict[str, AppliedTopup] = {t.topup_id: t for t in topups}
        self.idempotency: dict[str, IdemEntry] = dict(idempotency or {})

    # ----------------------------------------------------------------- queries
    def topped_up(self, license_id: str, meter: str, period: str) -> int:
        return sum(
            t.amount
            for t in self.topups.values()
            if (t.license_id, t.meter, t.period) == (license_id, meter, period)
        )

    def limit(self, license_id: str, meter: str, policy: MeterPolicy, period: str) -> int | None:
        if policy.limit is None:
            return None
        return policy.limit + self.topped_up(license_id, meter, period)

    def used(self, license_id: str, meter: str, period: str) -> int:
        return self.usage.get((license_id, meter, period), 0)

    def lookup(self, key: str, fp: str) -> UsageResult | None:
        """The remembered answer for ``key``; conflict if it was for another request."""
        entry = self.idempotency.get(key)
        if entry is None:
            return None
        if entry.fingerprint != fp:
            raise IdempotencyConflictError(
                f"Idempotency key {key!r} was already used for a different request",
                expected="the same meter, amount and client_id as the first request with this key",
                found=f"a request that differs ({entry.result.meter} x{entry.result.amount} "
                f"by {entry.result.client_id!r} first)",
                hint="Use a fresh idempotency key for each distinct usage event",
            )
        return replace(entry.result, replayed=True)

    # ----------------------------------------------------------------- changes
    def charge(
        self,
        *,
        meter: str,
        amount: int,
        client_id: str,
        key: str | None,
        now: datetime,
        sources: Sequence[tuple[str, MeterPolicy]],
    ) -> UsageResult:
        """Charge ``amount`` to one license, or raise :class:`QuotaExceeded`.

        ``sources`` are the usable licenses offering the meter in priority order. The
        whole amount goes to the first license whose remaining quota covers it; if
        none does, to the first license that allows going over (flagged); else refuse.
        """
        for allow_over in (False, True):
            for license_id, policy in sources:
                period = period_key(policy.period, now)
                used = self.used(license_id, meter, period)
                limit = self.limit(license_id, meter, policy, period)
                fits = limit is None or used + amount <= limit
                if fits or (allow_over and policy.over_limit == "allow"):
                    return self._settle(
                        UsageResult(
                            kind="usage",
                            meter=meter,
                            amount=amount,
                            client_id=client_id,
                            license_id=license_id,
                            period=period,
                            used=used + amount,
                            limit=limit,
                            flagged=not fits,
                            idempotency_key=key,
                        ),
                        now,
                    )
        limits = []
        for license_id, policy in sources:
            period = period_key(policy.period, now)
            limits.append(
                f"{license_id}: limit {self.limit(license_id, meter, policy, period)}, "
                f"used {self.used(license_id, meter, period)} in period {period}"
            )
        raise QuotaExceeded(
            f"The prepaid quota of meter {meter!r} is used up",
            expected=f"at least {amount} units remaining on one license",
            found="; ".join(limits) + f"; requested {amount}",
            hint="Ask the vendor for a top-up file and import it with the admin import "
            "endpoint (or `meterbox server import`)",
        )

    def decrement(
        self,
        *,
        meter: str,
        amount: int,
        client_id: str,
        key: str | None,
        now: datetime,
        sources: Sequence[tuple[str, MeterPolicy]],
    ) -> UsageResult:
        """Give back ``amount`` units, from the lowest-priority license that has usage.

        Usage never goes below zero: a decrement larger than what is counted stops at 0.
        """
        chosen: tuple[str, MeterPolicy] | None = None
        for license_id, policy in reversed(sources):
            if self.used(license_id, meter, period_key(policy.period, now)) > 0:
                chosen = (license_id, policy)
                break
        if chosen is None:
            chosen = sources[0]
        license_id, policy = chosen
        period = period_key(policy.period, now)
        return self._settle(
            UsageResult(
                kind="usage.decrement",
                meter=meter,
                amount=amount,
                client_id=client_id,
                license_id=license_id,
                period=period,
                used=max(0, self.used(license_id, meter, period) - amount),
                limit=self.limit(license_id, meter, policy, period),
                flagged=False,
                idempotency_key=key,
            ),
            now,
        )

    def undo(self, result: UsageResult, delta: int) -> None:
        """Roll back a change of ``delta`` units whose ledger record could not be written."""
        k = (result.license_id, result.meter, result.period)
        self.usage[k] = max(0, self.usage.get(k, 0) - delta)
        if result.idempotency_key is not None:
            self.idempotency.pop(result.idempotency_key, None)

    def complete(self, result: UsageResult, seq: int) -> UsageResult:
        """Attach the ledger sequence number once the record is durable."""
        done = replace(result, seq=seq)
        if result.idempotency_key is not None:
            entry = self.idempotency.get(result.idempotency_key)
            if entry is not None:
                self.idempotency[result.idempotency_key] = replace(entry, result=done)
        return done

    def _settle(self, result: UsageResult, now: datetime) -> UsageResult:
        """Store the count ``result`` reports and remember it under its idempotency key."""
        self.usage[(result.license_id, result.meter, result.period)] = result.used
        key = result.idempotency_key
        if key is not None:
            fp = fingerprint(result.kind, result.meter, result.amount, result.client_id)
            self.idempotency[key] = IdemEntry(fingerprint=fp, created_at=now, result=result)
        return result

    def apply_topup(
        self,
        *,
        topup_id: str,
        license_id: str,
        meter: str,
        policy: MeterPolicy,
        amount: int,
        now: datetime,
    ) -> AppliedTopup:
        if topup_id in self.topups:
            first = self.topups[topup_id]
            raise TopupAlreadyAppliedError(
                f"Top-up {topup_id!r} was already imported",
                expected="a top-up that has not been applied yet",
                found=f"it was applied at {first.applied_at.isoformat()} "
                f"(+{first.amount} {first.meter} on license {first.license_id})",
                hint="Nothing to do: each top-up counts once. Ask the vendor for a new "
                "top-up if more quota is needed",
            )
        topup = AppliedTopup(
            topup_id=topup_id,
            license_id=license_id,
            meter=meter,
            amount=amount,
            period=period_key(policy.period, now),
            applied_at=now,
        )
        self.topups[topup_id] = topup
        return topup

    def prune_keys(self, now: datetime, ttl: timedelta = IDEMPOTENCY_TTL) -> list[str]:
        """Forget idempotency keys older than ``ttl``; return the forgotten keys."""
        old = [k for k, e in self.idempotency.items() if now - e.created_at > ttl]
        for k in old:
            del self.idempotency[k]
        return old
