"""Floating seats held as leases: pure bookkeeping, no I/O, time passed in.

Invariants:

* at any license time ``now``, the live leases (``expires_at > now``) of a feature
  attributed to a license number at most that license's ``seats`` regular leases
  plus ``overdraft`` overdraft leases; the engine only grants within those counts;
* a client holds at most one live lease per feature: a second checkout renews it;
* lease ids are random (from the injected ``rng``) and never reused;
* a lease belongs to the API key that checked it out (``key_id``, ``None`` for a
  request without a key): only the same key renews or releases it, and a checkout
  under another key never returns its id, even for the same client id;
* a borrowed lease (``machine`` set, docs/adr/0028-seat-borrowing.md) takes a regular
  seat, never an overdraft one; it is never renewed or released, only returned (by the
  same key, from the same machine) or expired; and the administrator cannot remove it,
  because the borrow token stays valid offline until its expiry whatever the server does.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from meterbox.errors import ForbiddenError, NoSeatAvailable
from meterbox.server._core.policy import FeaturePolicy

#: A renewal is written to the ledger only when the last recorded one for the lease is
#: at least this fraction of the lease length old (see docs/adr/0003-server-state.md).
RENEW_RECORD_FRACTION = 0.5

LEASE_ID_BYTES = 16
#: Removed leases remembered so their holder's next heartbeat is told why (oldest dropped).
MAX_REMOVALS_KEPT = 10_000


@dataclass(frozen=True)
class SeatLease:
    lease_id: str
    feature: str
    client_id: str
    license_id: str
    issued_at: datetime
    expires_at: datetime
    lease_seconds: int
    overdraft: bool = False
    hostname: str | None = None
    #: License time of the last ledger record (checkout or renew) for this lease.
    recorded_at: datetime | None = None
    #: The API key that checked the lease out; ``None`` for a request without a key.
    key_id: str | None = None
    #: The user the client declared, and the group of its API key (for the options file).
    user: str | None = None
    group: str | None = None
    #: Borrowed seats only: the digest of the machine the borrow token is bound to.
    machine: str | None = None

    @property
    def borrowed(self) -> bool:
        return self.machine is not None

    def live(self, now: datetime) -> bool:
        return self.expires_at > now

    def owned_by(self, key_id: str | None) -> bool:
        return self.key_id == key_id


def claim(held: SeatLease, key_id: str | None) -> SeatLease:
    """``held`` if ``key_id`` owns it; a checkout under another key is refused.

    Client ids are public (the seat listing shows them), so a checkout naming a
    colleague's client id must not renew the colleague's lease and return its id.
    """
    if not held.owned_by(key_id):
        raise ForbiddenError(
            f"Client {held.client_id!r} holds a seat of {held.feature!r} under another API key",
            expected="a checkout with the key that took the seat",
            found="a different key" if key_id is not None else "no key",
            hint="Use your own client id (the SDK's default is user@host), "
            "or the key this client was given",
        )
    return held


@dataclass(frozen=True)
class SeatDecision:
    """Outcome of a checkout or heartbeat. ``record`` says whether to write it to the ledger."""

    lease: SeatLease
    renewed: bool
    record: bool
    #: The lease as it was before a renewal, to restore if the ledger write fails.
    previous: SeatLease | None = None

    @property
    def kind(self) -> str:
        return "seat.renew" if self.renewed else "seat.checkout"


@dataclass(frozen=True)
class Removal:
    """Why a lease is gone: the site administrator took it away."""

    lease: SeatLease
    removed_by: str
    at: datetime
    reason: str | None = None

    def explain(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"removed by {self.removed_by} at {self.at.isoformat()}{why}"


def hour_of(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def new_lease_id(rng: Callable[[int], bytes]) -> str:
    lease_id = base64.urlsafe_b64encode(rng(LEASE_ID_BYTES)).rstrip(b"=").decode("ascii")
    # Never a leading "-": a lease id is passed on command lines, where it would read as
    # an option (``meterbox client release -abc...``).
    return "_" + lease_id[1:] if lease_id.startswith("-") else lease_id


class LeaseTable(dict[str, SeatLease]):
    """Leases by id, with the indexes a checkout needs kept up to date on every change.

    A checkout used to scan every lease (the client's own lease, the seats taken per
    license); with thousands of live leases that scan was most of a checkout's time.
    Per feature the table keeps the leases, the count per (license, overdraft), the
    lease ids per client, and a heap of expiries: while the feature's earliest expiry
    is in the future (:meth:`exact`), the counts are exactly the live leases and no scan
    is needed; otherwise (leases that ran out and are not culled yet) callers scan.
    Every write goes through ``[]=``, ``del`` and ``pop``, which the indexes follow.
    """

    def __init__(self, leases: Iterable[SeatLease] = ()) -> None:
        super().__init__()
        self.by_feature: dict[str, dict[str, SeatLease]] = {}
        self.by_client: dict[tuple[str, str], set[str]] = {}
        self.taken: dict[tuple[str, str, bool], int] = {}
        self._expiries: dict[str, list[tuple[datetime, str]]] = {}
        for lease in leases:
            self[lease.lease_id] = lease

    def _unindex(self, lease: SeatLease) -> None:
        self.by_feature[lease.feature].pop(lease.lease_id, None)
        ids = self.by_client.get((lease.feature, lease.client_id))
        if ids is not None:
            ids.discard(lease.lease_id)
            if not ids:
                del self.by_client[(lease.feature, lease.client_id)]
        key = (lease.feature, lease.license_id, lease.overdraft)
        self.taken[key] -= 1

    def __setitem__(self, lease_id: str, lease: SeatLease) -> None:
        old = self.get(lease_id)
        if old is not None:
            self._unindex(old)
        super().__setitem__(lease_id, lease)
        self.by_feature.setdefault(lease.feature, {})[lease_id] = lease
        self.by_client.setdefault((lease.feature, lease.client_id), set()).add(lease_id)
        key = (lease.feature, lease.license_id, lease.overdraft)
        self.taken[key] = self.taken.get(key, 0) + 1
        heapq.heappush(self._expiries.setdefault(lease.feature, []), (lease.expires_at, lease_id))

    def __delitem__(self, lease_id: str) -> None:
        self._unindex(self[lease_id])
        super().__delitem__(lease_id)

    def pop(self, lease_id: str, default: Any = None) -> Any:
        """``dict.pop`` that keeps the indexes (a missing id gives ``default``)."""
        lease = self.get(lease_id)
        if lease is None:
            return default
        del self[lease_id]
        return lease

    def exact(self, feature: str, now: datetime) -> bool:
        """Whether every indexed lease of ``feature`` is live at ``now`` (counts are exact)."""
        heap = self._expiries.get(feature)
        while heap:
            expires, lease_id = heap[0]
            lease = self.get(lease_id)
            if lease is None or lease.expires_at != expires:
                heapq.heappop(heap)  # released, renewed or expired since it was pushed
                continue
            return expires > now
        return True

    def count(self, feature: str) -> int:
        return len(self.by_feature.get(feature, ()))


class SeatBook:
    """All leases, denial counts and hourly peaks."""

    def __init__(
        self,
        leases: Iterable[SeatLease] = (),
        denials: dict[str, int] | None = None,
        peaks: dict[tuple[str, datetime], int] | None = None,
    ) -> None:
        self.leases = LeaseTable(leases)
        #: Leases the administrator removed, by id, oldest first (kept in memory only).
        self.removed: dict[str, Removal] = {}
        self.denials: dict[str, int] = dict(denials or {})
        #: Checkouts the site's options refused, per feature (in memory; not the vendor's).
        self.policy_denials: dict[str, int] = {}
        self.peaks: dict[tuple[str, datetime], int] = dict(peaks or {})

    # ----------------------------------------------------------------- queries
    def live(self, feature: str, now: datetime) -> list[SeatLease]:
        return [x for x in self.leases.by_feature.get(feature, {}).values() if x.live(now)]

    def in_use(self, feature: str, now: datetime) -> int:
        if self.leases.exact(feature, now):
            return self.leases.count(feature)
        return len(self.live(feature, now))

    def held_by(self, feature: str, client_id: str, now: datetime) -> SeatLease | None:
        for lease_id in sorted(self.leases.by_client.get((feature, client_id), ())):
            lease = self.leases[lease_id]
            if lease.live(now):
                return lease
        return None

    def _taken(self, feature: str, license_id: str, overdraft: bool, now: datetime) -> int:
        if self.leases.exact(feature, now):
            return self.leases.taken.get((feature, license_id, overdraft), 0)
        return sum(
            1
            for x in self.live(feature, now)
            if x.license_id == license_id and x.overdraft == overdraft
        )

    # ----------------------------------------------------------------- changes
    def renew(self, lease: SeatLease, now: datetime) -> SeatDecision:
        """Extend a live lease by its length from ``now``; coalesce ledger records.

        A borrowed lease is answered as it is: it runs to its token's expiry, no longer.
        """
        if lease.borrowed:
            return SeatDecision(lease=lease, renewed=True, record=False)
        half = timedelta(seconds=lease.lease_seconds * RENEW_RECORD_FRACTION)
        record = lease.recorded_at is None or now - lease.recorded_at >= half
        renewed = replace(
            lease,
            expires_at=max(lease.expires_at, now + timedelta(seconds=lease.lease_seconds)),
            recorded_at=now if record else lease.recorded_at,
        )
        self.leases[lease.lease_id] = renewed
        return SeatDecision(lease=renewed, renewed=True, record=record, previous=lease)

    def checkout(  # noqa: PLR0913 - the lease's fields, passed through from one checkout
        self,
        feature: str,
        client_id: str,
        now: datetime,
        *,
        sources: Sequence[tuple[str, FeaturePolicy]],
        rng: Callable[[int], bytes],
        hostname: str | None = None,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> SeatDecision:
        """Grant a seat from the first source with a free seat, else an overdraft seat.

        ``sources`` are the usable licenses offering the feature, in priority order.
        Raises :class:`NoSeatAvailable` (and counts a denial) when all are held; its
        ``license_id`` names the first source, the license the denial is billed to.
        """
        held = self.held_by(feature, client_id, now)
        if held is not None:
            return self.renew(claim(held, key_id), now)
        template = SeatLease(
            lease_id="",
            feature=feature,
            client_id=client_id,
            license_id="",
            issued_at=now,
            expires_at=now,
            lease_seconds=0,
            hostname=hostname,
            recorded_at=now,
            key_id=key_id,
            user=user,
            group=group,
        )
        return SeatDecision(
            lease=self.grant(template, now, sources=sources, rng=rng), renewed=False, record=True
        )

    def grant(
        self,
        template: SeatLease,
        now: datetime,
        *,
        sources: Sequence[tuple[str, FeaturePolicy]],
        rng: Callable[[int], bytes],
        seconds: int | None = None,
        overdraft_allowed: bool = True,
    ) -> SeatLease:
        """A new lease like ``template`` from the first source with a free seat.

        It gets a fresh id, its license, and a length of ``seconds`` (the license's lease
        length when ``None``). Without ``overdraft_allowed`` only regular seats are
        tried (borrows). Raises :class:`NoSeatAvailable` and counts a denial otherwise.
        """
        feature = template.feature
        for overdraft in (False, True) if overdraft_allowed else (False,):
            for license_id, policy in sources:
                cap = policy.overdraft if overdraft else policy.seats
                if self._taken(feature, license_id, overdraft, now) < cap:
                    length = policy.lease_seconds if seconds is None else seconds
                    lease = replace(
                        template,
                        lease_id=new_lease_id(rng),
                        license_id=license_id,
                        issued_at=now,
                        expires_at=now + timedelta(seconds=length),
                        lease_seconds=length,
                        overdraft=overdraft,
                        recorded_at=now,
                    )
                    self.leases[lease.lease_id] = lease
                    self.note_peak(feature, now)
                    return lease
        self.denials[feature] = self.denials.get(feature, 0) + 1
        live = self.live(feature, now)
        seats = sum(p.seats for _, p in sources)
        overdraft_seats = sum(p.overdraft for _, p in sources)
        earliest = min((x.expires_at for x in live), default=None)
        denied = NoSeatAvailable(
            f"No seat is free for feature {feature!r}",
            expected=f"a free seat among {seats} seats and {overdraft_seats} overdraft seats",
            found=f"all {len(live)} held"
            + (f"; the earliest lease runs out at {earliest.isoformat()}" if earliest else ""),
            hint="Retry after a lease is released or runs out, or ask the vendor for more seats",
        )
        # A denial belongs to the license the client would have been given a seat of
        # first, so the vendor bills and reports it against that customer's license.
        denied.license_id = sources[0][0] if sources else None
        raise denied

    def release(self, lease_id: str) -> SeatLease | None:
        """Drop a lease; ``None`` if it is not held (release is idempotent)."""
        lease: SeatLease | None = self.leases.pop(lease_id, None)
        return lease

    def matching(
        self,
        now: datetime,
        *,
        lease_id: str | None = None,
        client_id: str | None = None,
        hostname: str | None = None,
    ) -> list[SeatLease]:
        """The live leases with that id, client id or host name (exactly one is given).

        Borrowed leases are never among them: their tokens stay valid offline, so
        removing one would free a seat that is still in use.
        """
        given = [x for x in (lease_id, client_id, hostname) if x is not None]
        if len(given) != 1:
            raise ValueError("exactly one of lease_id, client_id, hostname")
        found = [
            x
            for x in self.leases.values()
            if x.live(now)
            and not x.borrowed
            and (
                x.lease_id == lease_id
                or (client_id is not None and x.client_id == client_id)
                or (hostname is not None and x.hostname == hostname)
            )
        ]
        return sorted(found, key=lambda x: (x.issued_at, x.lease_id))

    def remove(
        self, leases: Iterable[SeatLease], removed_by: str, now: datetime, reason: str | None
    ) -> list[Removal]:
        """Take ``leases`` away and remember why, for their holders' next heartbeat."""
        out = []
        for lease in leases:
            if self.leases.pop(lease.lease_id, None) is None:
                continue
            removal = Removal(lease, removed_by, now, reason)
            self.removed[lease.lease_id] = removal
            out.append(removal)
        while len(self.removed) > MAX_REMOVALS_KEPT:
            del self.removed[next(iter(self.removed))]
        return out

    def undo_remove(self, removal: Removal) -> None:
        self.removed.pop(removal.lease.lease_id, None)
        self.leases[removal.lease.lease_id] = removal.lease

    def expire(self, now: datetime) -> list[SeatLease]:
        """Remove and return every lease whose expiry is at or before ``now``."""
        gone = [lease for lease in self.leases.values() if not lease.live(now)]
        for lease in gone:
            del self.leases[lease.lease_id]
        return sorted(gone, key=lambda x: (x.expires_at, x.lease_id))

    def note_peak(self, feature: str, now: datetime) -> tuple[str, datetime, int] | None:
        """Raise this hour's peak for ``feature`` to the seats now in use; return it if raised."""
        key = (feature, hour_of(now))
        in_use = self.in_use(feature, now)
        if in_use > self.peaks.get(key, 0):
            self.peaks[key] = in_use
            return (feature, key[1], in_use)
        return None
