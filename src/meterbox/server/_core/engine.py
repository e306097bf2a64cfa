"""The license server's decision core: seats, meters, report deadlines. Pure.

The engine holds the whole licensing state in memory and decides every request
given the license time ``now`` passed in by the caller; it does no I/O, reads no
clock and draws randomness only from the injected ``rng``. The HTTP shell
(:mod:`meterbox.server._service`) serialises calls, writes each decision to the
ledger, persists it in SQLite (:mod:`meterbox.server._state`), and calls the
``undo_*`` methods when the ledger refuses a record.

Rules that span licenses (see docs/adr/0003-server-state.md):

* licenses are ordered by expiry (earliest first, no expiry last), then license id;
* seats of a feature add up across usable licenses; a new lease is attributed to
  the first license in that order with a free regular seat, else the first with a
  free overdraft seat (flagged ``overdraft``);
* usage is charged whole to the first license whose remaining quota covers it;
  if none does, to the first license whose meter allows going over (flagged);
  otherwise it is refused;
* a license the vendor suspended or revoked (a signed notice, docs/spec/suspension.md)
  grants nothing at all, before any other check; its leases were ended at the import;
* a license is usable while it is not expired and its report deadline (last
  receipt's vendor time, or the license's issue time, plus ``report_every_days`` plus
  ``grace_days``) has not passed. An unusable license grants no new seat, no
  renewal and no usage; its existing leases run out at their current expiry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from meterbox.errors import (
    BorrowRefused,
    ConfigError,
    LeaseRemoved,
    LicenseDenied,
    LicenseExpired,
    LicenseRevoked,
    LicenseSuspended,
    NoSeatAvailable,
    PolicyDenied,
    ReportOverdue,
    StateError,
    UnknownFeature,
)
from meterbox.ledger.records import MAX_AMOUNT
from meterbox.server._core.meters import (
    IDEMPOTENCY_TTL,
    AppliedTopup,
    MeterBook,
    UsageResult,
    fingerprint,
    period_key,
    period_start,
)
from meterbox.server._core.options import Identity, SeatOptions
from meterbox.server._core.policy import (
    MAX_REQUESTED_LEASE_SECONDS,
    FeaturePolicy,
    LicensePolicy,
    MeterPolicy,
)
from meterbox.server._core.seats import Removal, SeatBook, SeatDecision, SeatLease, claim
from meterbox.server._core.standing import Standing
from meterbox.server._core.standing import apply as apply_notice
from meterbox.server._errors import LeaseNotFound, UnknownMeter

#: A license's policy for one feature or one meter.
_Policy = TypeVar("_Policy", FeaturePolicy, MeterPolicy)

_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ReceiptInfo:
    """The last receipt the vendor sent back: its signing time and the ledger seq it covers."""

    vendor_time: datetime
    seq: int
    receipt_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "vendor_time": self.vendor_time.isoformat(),
            "seq": self.seq,
            "receipt_id": self.receipt_id,
        }


@dataclass(frozen=True)
class BorrowDecision:
    """A borrow: the borrowed lease, the client's ordinary lease it replaced, and whether
    it is new (``record``; a repeated borrow from the same machine is answered again)."""

    lease: SeatLease
    replaced: SeatLease | None
    record: bool


@dataclass(frozen=True)
class UsageDecision:
    """A usage answer plus what the shell needs: the counter change and whether it is a replay."""

    result: UsageResult
    delta: int
    replay: bool


class Engine:
    """Seats, meters and deadlines for every installed license."""

    def __init__(
        self,
        licenses: Iterable[LicensePolicy] = (),
        *,
        init_time: datetime,
        rng: Callable[[int], bytes] = os.urandom,
        seats: SeatBook | None = None,
        meters: MeterBook | None = None,
        last_receipt: ReceiptInfo | None = None,
        idempotency_ttl: timedelta = IDEMPOTENCY_TTL,
    ) -> None:
        if init_time.utcoffset() is None:
            raise ValueError("init_time must be timezone-aware")
        self.licenses: dict[str, LicensePolicy] = {}
        for lic in licenses:
            self.install(lic)
        self.init_time = init_time
        self.rng = rng
        self.seats = seats if seats is not None else SeatBook()
        self.meters = meters if meters is not None else MeterBook()
        self.last_receipt = last_receipt
        self.idempotency_ttl = idempotency_ttl
        #: The site's seat options file (reservations, maximums, include/exclude).
        self.options = SeatOptions()
        #: True in a cluster: the options are decided over every node's seats where the
        #: shared seat is claimed (docs/adr/0034). Here they are decided over no leases
        #: at all, which refuses only what no holders could make admissible (exclude and
        #: include lists, a maximum of 0, reservations that leave nothing): this node's
        #: own leases are a partial view that would call a full cluster "reserved".
        self.options_on_claim = False
        #: The vendor's notices per license (absent: never suspended or revoked).
        self.standings: dict[str, Standing] = {}

    # ------------------------------------------------------------ licenses
    def install(self, lic: LicensePolicy) -> None:
        """Install or replace (same id) a license."""
        self.licenses[lic.license_id] = lic

    def ordered(self) -> list[LicensePolicy]:
        return sorted(
            self.licenses.values(), key=lambda x: (x.expires or _FAR_FUTURE, x.license_id)
        )

    def report_base(self, lic: LicensePolicy | None = None) -> datetime:
        """Where the report interval of ``lic`` runs from: the last receipt's vendor time.

        Before the first receipt it is the license's signed issue time, never the
        server's own initialisation: a fresh ``server init`` (or a deleted state file)
        with the same license must not give a fresh deadline.
        """
        if self.last_receipt is not None:
            return self.last_receipt.vendor_time
        return lic.issued if lic is not None else self.init_time

    def report_due(self, lic: LicensePolicy) -> datetime | None:
        """When the next report is due (before grace), or ``None`` if never required."""
        if lic.report_every_days is None:
            return None
        return self.report_base(lic) + timedelta(days=lic.report_every_days)

    def report_deadline(self, lic: LicensePolicy) -> datetime | None:
        """After this license time, the license grants nothing new until a receipt arrives."""
        due = self.report_due(lic)
        return None if due is None else due + timedelta(days=lic.grace_days)

    def standing_error(self, license_id: str) -> LicenseDenied | None:
        """The refusal a suspended or revoked license answers with, or ``None``."""
        standing = self.standings.get(license_id)
        if standing is None or standing.grants:
            return None
        revoked = standing.status == "revoked"
        cls = LicenseRevoked if revoked else LicenseSuspended
        return cls(
            f"License {license_id!r} was {standing.explain()}",
            expected="a license in good standing with its vendor",
            found=f"a {'revocation' if revoked else 'suspension'} notice imported at "
            f"{standing.at.isoformat()}",
            hint="Contact the vendor; a new license file is needed"
            if revoked
            else "Contact the vendor: the license grants again once they send a resume notice",
        )

    def blocked(self, lic: LicensePolicy, now: datetime) -> LicenseDenied | None:
        """Why ``lic`` grants nothing new at ``now``, or ``None`` if it is usable."""
        standing = self.standing_error(lic.license_id)
        if standing is not None:
            return standing
        if lic.expires is not None and now >= lic.expires:
            return LicenseExpired(
                f"License {lic.license_id!r} has expired",
                expected=f"a license valid at {now.isoformat()}",
                found=f"it expired at {lic.expires.isoformat()}",
                hint="Ask the vendor for a renewed license file and import it",
            )
        deadline = self.report_deadline(lic)
        if deadline is not None and now > deadline:
            return ReportOverdue(
                f"License {lic.license_id!r} needs a usage report: no new seats or usage "
                f"since {deadline.isoformat()}",
                expected=f"a receipt at least every {lic.report_every_days} days "
                f"(+{lic.grace_days} days grace)",
                found=f"the last receipt is from {self.report_base(lic).isoformat()}"
                if self.last_receipt is not None
                else f"no receipt since the license was issued "
                f"({self.report_base(lic).isoformat()})",
                hint="Export a report (`meterbox server export`), send it to the vendor, and "
                "import the receipt they send back; existing leases run out normally",
            )
        return None

    def _usable(
        self, now: datetime, name: str, offers: Callable[[LicensePolicy], bool]
    ) -> list[LicensePolicy]:
        offering = [lic for lic in self.ordered() if offers(lic)]
        usable = [lic for lic in offering if self.blocked(lic, now) is None]
        if offering and not usable:
            err = self.blocked(offering[0], now)
            assert err is not None
            raise err
        del name
        return usable

    def feature_sources(self, feature: str, now: datetime) -> list[tuple[str, FeaturePolicy]]:
        return self._sources(UnknownFeature, "feature", feature, now, lambda lic: lic.features)

    def meter_sources(self, meter: str, now: datetime) -> list[tuple[str, MeterPolicy]]:
        return self._sources(UnknownMeter, "meter", meter, now, lambda lic: lic.meters)

    def _sources(
        self,
        unknown: type[LicenseDenied],
        kind: str,
        name: str,
        now: datetime,
        offered: Callable[[LicensePolicy], Mapping[str, _Policy]],
    ) -> list[tuple[str, _Policy]]:
        """The usable licenses offering ``name`` in order, with their policy for it.

        ``offered`` picks the table (features or meters) of a license; ``unknown`` is
        raised when no installed license offers the name at all.
        """
        usable = self._usable(now, name, lambda lic: name in offered(lic))
        if not usable:
            known = {n for lic in self.licenses.values() for n in offered(lic)}
            if name not in known:
                raise unknown(
                    f"No installed license offers {kind} {name!r}",
                    expected="one of: " + (", ".join(sorted(known)) or "(none)"),
                    found=repr(name),
                    hint=f"Check the {kind} name in the application, or install a license for it",
                )
        return [(lic.license_id, offered(lic)[name]) for lic in usable]

    def feature_names(self) -> set[str]:
        return {f for lic in self.licenses.values() for f in lic.features}

    # --------------------------------------------------------------- seats
    def checkout(
        self,
        feature: str,
        client_id: str,
        now: datetime,
        hostname: str | None = None,
        *,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> SeatDecision:
        """A new seat, or the client's own lease renewed.

        A new seat must pass the site's options (:meth:`SeatOptions.admit`) first; a
        refusal is :class:`PolicyDenied`, counted in ``seats.policy_denials``.
        """
        held = self.seats.held_by(feature, client_id, now)
        if held is not None:
            return self.heartbeat(claim(held, key_id).lease_id, now, key_id=key_id)
        sources = self.feature_sources(feature, now)
        self._admit(feature, now, hostname, user, group)
        return self.seats.checkout(
            feature,
            client_id,
            now,
            sources=sources,
            rng=self.rng,
            hostname=hostname,
            key_id=key_id,
            user=user,
            group=group,
        )

    def borrow(  # noqa: PLR0913 - the borrowed lease's fields, passed through from one request
        self,
        feature: str,
        client_id: str,
        now: datetime,
        *,
        hours: int,
        machine: str,
        hostname: str | None = None,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> BorrowDecision:
        """A seat of ``feature`` borrowed for ``hours`` by the machine with digest ``machine``.

        Only licenses whose ``max_borrow_hours`` covers ``hours`` lend seats, and only
        regular seats (an overdraft seat is a short-term allowance, not one to take away
        for days). A live borrow of this client from the same machine is answered again
        unchanged (a retry gets the same token); one from another machine is refused. A
        live ordinary lease of the client is handed over: it ends and the borrow takes
        its place in one decision, so the client never holds two seats. The site's
        options decide a borrow exactly as a checkout.
        """
        held = self.seats.held_by(feature, client_id, now)
        if held is not None:
            claim(held, key_id)
            if held.borrowed:
                if held.machine != machine:
                    raise BorrowRefused(
                        f"Client {client_id!r} has borrowed a seat of {feature!r} on another "
                        "machine",
                        expected="a borrow from the machine that holds it, or none held",
                        found=f"a borrow until {held.expires_at.isoformat()} on another machine",
                        hint="Return the seat from the machine that borrowed it, or wait for "
                        "it to expire",
                    )
                return BorrowDecision(lease=held, replaced=None, record=False)
        lic_hours = self._borrow_hours(feature, now)
        if not 1 <= hours <= lic_hours:
            raise BorrowRefused(
                f"A seat of {feature!r} cannot be borrowed for {hours} hours",
                expected=f"1 to {lic_hours} hours (the longest any installed license allows)"
                if lic_hours
                else "a license that allows borrowing (max_borrow_hours)",
                found=f"{hours} hours",
                hint="Ask for a shorter borrow"
                if lic_hours
                else "Ask the vendor for a license with max_borrow_hours",
            )
        sources = [
            (lic.license_id, lic.features[feature])
            for lic in self.ordered()
            if feature in lic.features
            and lic.max_borrow_hours >= hours
            and self.blocked(lic, now) is None
        ]
        if held is not None:
            self.seats.release(held.lease_id)
        self._admit(feature, now, hostname, user, group, undo=held)
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
            machine=machine,
        )
        try:
            lease = self.seats.grant(
                template,
                now,
                sources=sources,
                rng=self.rng,
                seconds=hours * 3600,
                overdraft_allowed=False,
            )
        except NoSeatAvailable:
            if held is not None:
                self.seats.leases[held.lease_id] = held
            raise
        # Whole seconds: the ledger record, the state and the token name one expiry.
        lease = replace(lease, expires_at=lease.expires_at.replace(microsecond=0))
        self.seats.leases[lease.lease_id] = lease
        return BorrowDecision(lease=lease, replaced=held, record=True)

    def _borrow_hours(self, feature: str, now: datetime) -> int:
        """The longest borrow of ``feature`` any usable license allows (0: none)."""
        usable = self._usable(now, feature, lambda lic: feature in lic.features)
        if not usable and feature not in self.feature_names():
            self.feature_sources(feature, now)  # raises UnknownFeature
        return max((lic.max_borrow_hours for lic in usable), default=0)

    def _admit(
        self,
        feature: str,
        now: datetime,
        hostname: str | None,
        user: str | None,
        group: str | None,
        *,
        undo: SeatLease | None = None,
    ) -> None:
        """The site's options on a new seat; ``undo`` is put back if they refuse."""
        if feature not in self.options.features:
            return
        sources = self.feature_sources(feature, now)
        capacity = sum(p.seats + p.overdraft for _, p in sources)
        try:
            self.options.admit(
                feature,
                Identity(user=user, host=hostname, group=group),
                [] if self.options_on_claim else self.seats.live(feature, now),
                capacity,
            )
        except PolicyDenied:
            self.seats.policy_denials[feature] = self.seats.policy_denials.get(feature, 0) + 1
            if undo is not None:
                self.seats.leases[undo.lease_id] = undo
            raise

    def return_borrow(
        self, lease_id: str, machine: str, now: datetime, *, key_id: str | None = None
    ) -> SeatLease | None:
        """End borrowed lease ``lease_id`` early; ``None`` if it is not held (idempotent).

        Only the key that borrowed it, from the machine it was borrowed on, may return it:
        the token stays on that machine, and a return from anywhere else would free a
        seat whose token is still usable there.
        """
        lease = self.seats.leases.get(lease_id)
        if lease is None or not lease.owned_by(key_id) or not lease.live(now):
            return None
        if not lease.borrowed:
            raise BorrowRefused(
                f"Lease {lease_id!r} is not a borrowed seat",
                expected="the lease id of a borrow",
                found="an ordinary lease",
                hint="Release an ordinary lease with /v1/seats/release",
            )
        if lease.machine != machine:
            raise BorrowRefused(
                f"Borrowed seat {lease_id!r} was borrowed on another machine",
                expected="a return from the machine that holds the borrow token",
                found="another machine code",
                hint="Return the seat from the machine that borrowed it",
            )
        return self.seats.release(lease_id)

    def undo_borrow(self, decision: BorrowDecision) -> None:
        """Take back a borrow whose ledger records could not be written."""
        if decision.record:
            self.seats.leases.pop(decision.lease.lease_id, None)
        if decision.replaced is not None:
            self.seats.leases[decision.replaced.lease_id] = decision.replaced

    def checkout_on(
        self,
        license_id: str,
        feature: str,
        client_id: str,
        now: datetime,
        *,
        lease_seconds: int | None = None,
        overdraft_cap: int | None = None,
        hostname: str | None = None,
    ) -> SeatDecision:
        """Check out (or renew) a seat of ``feature`` from one named license only.

        For callers that address a single license, such as the Cryptolens-compatible
        API (a Cryptolens key names one license). ``lease_seconds`` replaces the
        feature's lease length for this lease, clamped to 1..``MAX_REQUESTED_LEASE_SECONDS``;
        ``overdraft_cap`` lowers (never raises) the license's overdraft seats for this
        checkout. A live lease of this client on this license is renewed instead.
        """
        lic = self.licenses.get(license_id)
        if lic is None or feature not in lic.features:
            raise UnknownFeature(
                f"License {license_id!r} does not offer feature {feature!r}",
                expected="an installed license that grants the feature",
                found="no such license" if lic is None else "the license lacks it",
                hint="Install the license, or check the feature the license names",
            )
        err = self.blocked(lic, now)
        if err is not None:
            raise err
        policy = lic.features[feature]
        length = min(max(lease_seconds or policy.lease_seconds, 1), MAX_REQUESTED_LEASE_SECONDS)
        for held in self.seats.live(feature, now):
            if held.client_id == client_id and held.license_id == license_id:
                decision = self.seats.renew(replace(held, lease_seconds=length), now)
                # Undo must restore the lease exactly as it was, lease length included.
                return replace(decision, previous=held)
        cap = (
            policy.overdraft
            if overdraft_cap is None
            else min(max(overdraft_cap, 0), policy.overdraft)
        )
        source = FeaturePolicy(
            seats=policy.seats, overdraft=cap, lease_seconds=policy.lease_seconds
        )
        decision = self.seats.checkout(
            feature, client_id, now, sources=[(license_id, source)], rng=self.rng, hostname=hostname
        )
        if decision.renewed or decision.lease.lease_seconds == length:
            return decision
        # The license's lease length bounds what a license may configure; an explicit
        # request may be longer (up to MAX_REQUESTED_LEASE_SECONDS), so the new lease
        # takes the requested length after the seat decision.
        lease = replace(
            decision.lease, lease_seconds=length, expires_at=now + timedelta(seconds=length)
        )
        self.seats.leases[lease.lease_id] = lease
        return replace(decision, lease=lease)

    def heartbeat(self, lease_id: str, now: datetime, *, key_id: str | None = None) -> SeatDecision:
        """Renew lease ``lease_id``; only the key that checked it out may.

        A lease of another key answers exactly like an unknown id, so a request cannot
        tell whether an id it guessed or copied exists.
        """
        lease = self.seats.leases.get(lease_id)
        if lease is not None and not lease.owned_by(key_id):
            lease = None
        removal = self.seats.removed.get(lease_id)
        if lease is None and removal is not None and removal.lease.owned_by(key_id):
            # Ended by a vendor notice that still stands: the holder is told that.
            standing = self.standing_error(removal.lease.license_id)
            if standing is not None:
                raise standing
            raise LeaseRemoved(
                f"Lease {lease_id!r} of feature {removal.lease.feature!r} was " + removal.explain(),
                expected="a live lease id from a checkout",
                found="a lease the site administrator removed",
                hint="Ask the site administrator before checking the seat out again",
            )
        if lease is None or not lease.live(now):
            raise LeaseNotFound(
                f"Lease {lease_id!r} is not held",
                expected="a live lease id from a checkout",
                found="no such lease: it ran out, was released, or never existed"
                if lease is None
                else f"it ran out at {lease.expires_at.isoformat()}",
                hint="Check out a seat again",
            )
        lic = self.licenses.get(lease.license_id)
        if lic is None:
            raise LicenseExpired(
                f"License {lease.license_id!r} of lease {lease_id!r} is no longer installed",
                expected="the license that granted the lease",
                found="it was removed",
                hint="Check out a seat again",
            )
        err = self.blocked(lic, now)
        if err is not None:
            raise err
        return self.seats.renew(lease, now)

    def release(self, lease_id: str, *, key_id: str | None = None) -> SeatLease | None:
        """Drop a lease of ``key_id``; ``None`` if it is not held (or held by another key).

        A borrowed lease is not released this way (:meth:`return_borrow` checks the machine).
        """
        lease = self.seats.leases.get(lease_id)
        if lease is None or not lease.owned_by(key_id):
            return None
        if lease.borrowed:
            raise BorrowRefused(
                f"Lease {lease_id!r} is a borrowed seat",
                expected="an ordinary lease to release",
                found=f"a borrow until {lease.expires_at.isoformat()}",
                hint="Return a borrowed seat from its machine (`meterbox client return`)",
            )
        return self.seats.release(lease_id)

    def is_known_lease(self, lease_id: str) -> bool:
        """Whether the server holds (or removed) ``lease_id``: not evidence of a lost checkout."""
        return lease_id in self.seats.leases or lease_id in self.seats.removed

    def expire(self, now: datetime) -> list[SeatLease]:
        return self.seats.expire(now)

    def remove(
        self,
        now: datetime,
        removed_by: str,
        *,
        lease_id: str | None = None,
        client_id: str | None = None,
        hostname: str | None = None,
        reason: str | None = None,
    ) -> list[Removal]:
        """The administrator takes away the live leases with that id, client or host.

        Exactly one selector is given. The holders' next heartbeat is refused with
        :class:`LeaseRemoved` naming ``removed_by`` and ``reason``; nothing else changes.
        """
        leases = self.seats.matching(now, lease_id=lease_id, client_id=client_id, hostname=hostname)
        return self.seats.remove(leases, removed_by, now, reason)

    def apply_notice(
        self,
        *,
        license_id: str,
        notice_id: str,
        action: str,
        sequence: int,
        reason: str | None,
        now: datetime,
    ) -> tuple[Standing, list[Removal]]:
        """Apply a vendor notice (:func:`~meterbox.server._core.standing.apply`).

        A suspension or revocation ends every live lease of the license at once (a
        removal by ``vendor``, so the holder's next heartbeat is told why); a resume
        ends nothing. :meth:`undo_notice` takes it all back.
        """
        if license_id not in self.licenses:
            raise StateError(
                f"License notice {notice_id} is for license {license_id!r}, which is not installed",
                expected="one of " + (", ".join(sorted(self.licenses)) or "(none)"),
                found=repr(license_id),
                hint="Import the notice on the server that holds the license",
            )
        standing = apply_notice(
            self.standings.get(license_id),
            license_id=license_id,
            notice_id=notice_id,
            action=action,
            sequence=sequence,
            reason=reason,
            at=now,
        )
        self.standings[license_id] = standing
        if standing.grants:
            return standing, []
        leases = [
            x for x in self.seats.leases.values() if x.license_id == license_id and x.live(now)
        ]
        why = f"license {standing.status} by notice {notice_id}" + (f": {reason}" if reason else "")
        return standing, self.seats.remove(leases, "vendor", now, why)

    def undo_notice(
        self, license_id: str, previous: Standing | None, removals: Iterable[Removal]
    ) -> None:
        """Take back :meth:`apply_notice` whose ledger record could not be written."""
        if previous is None:
            self.standings.pop(license_id, None)
        else:
            self.standings[license_id] = previous
        for r in removals:
            self.seats.undo_remove(r)

    def note_peaks(self, now: datetime) -> list[tuple[str, datetime, int]]:
        raised = [self.seats.note_peak(f, now) for f in sorted(self.feature_names())]
        return [p for p in raised if p is not None]

    def undo_seat(self, decision: SeatDecision) -> None:
        """Take back a seat decision whose ledger record could not be written."""
        if decision.previous is not None:
            self.seats.leases[decision.previous.lease_id] = decision.previous
        else:
            self.seats.leases.pop(decision.lease.lease_id, None)

    # -------------------------------------------------------------- meters
    def record_usage(
        self,
        meter: str,
        amount: int,
        client_id: str,
        idempotency_key: str | None,
        now: datetime,
        *,
        decrement: bool = False,
        license_id: str | None = None,
    ) -> UsageDecision:
        """Charge (or give back, ``decrement=True``) ``amount`` units of ``meter``.

        With ``license_id``, only that license's meter is charged or given back (for
        callers that address one license, like the Cryptolens-compatible API).
        """
        if not 0 < amount <= MAX_AMOUNT:
            raise ConfigError(
                "Usage amount is out of range",
                expected=f"an integer from 1 to {MAX_AMOUNT}",
                found=str(amount),
                hint="Record large amounts as several records; nothing was recorded",
            )
        kind = "usage.decrement" if decrement else "usage"
        if idempotency_key is not None:
            replayed = self.meters.lookup(
                idempotency_key, fingerprint(kind, meter, amount, client_id)
            )
            if replayed is not None:
                return UsageDecision(result=replayed, delta=0, replay=True)
        sources = self.meter_sources(meter, now)
        if license_id is not None:
            sources = self._only_license(license_id, meter, sources, now)
        if decrement:
            before = {
                lid: self.meters.used(lid, meter, period_key(p.period, now)) for lid, p in sources
            }
            result = self.meters.decrement(
                meter=meter,
                amount=amount,
                client_id=client_id,
                key=idempotency_key,
                now=now,
                sources=sources,
            )
            return UsageDecision(
                result=result, delta=result.used - before[result.license_id], replay=False
            )
        result = self.meters.charge(
            meter=meter,
            amount=amount,
            client_id=client_id,
            key=idempotency_key,
            now=now,
            sources=sources,
        )
        return UsageDecision(result=result, delta=amount, replay=False)

    def _only_license(
        self,
        license_id: str,
        meter: str,
        sources: list[tuple[str, MeterPolicy]],
        now: datetime,
    ) -> list[tuple[str, MeterPolicy]]:
        mine = [s for s in sources if s[0] == license_id]
        if mine:
            return mine
        lic = self.licenses.get(license_id)
        if lic is None or meter not in lic.meters:
            raise UnknownMeter(
                f"License {license_id!r} does not offer meter {meter!r}",
                expected="an installed license with that meter",
                found="no such license" if lic is None else "the license lacks it",
                hint="Install the license, or check the meter the license names",
            )
        err = self.blocked(lic, now)
        assert err is not None  # offered and not among the usable sources: so blocked
        raise err

    def complete_usage(self, decision: UsageDecision, seq: int) -> UsageResult:
        return self.meters.complete(decision.result, seq)

    def undo_usage(self, decision: UsageDecision) -> None:
        if not decision.replay:
            self.meters.undo(decision.result, decision.delta)

    def apply_topup(
        self, topup_id: str, license_id: str, meter: str, amount: int, now: datetime
    ) -> AppliedTopup:
        lic = self.licenses.get(license_id)
        if lic is None or meter not in lic.meters:
            raise UnknownMeter(
                f"Top-up {topup_id!r} is for a meter this server does not have",
                expected="an installed license with that meter",
                found=f"license {license_id!r}, meter {meter!r}",
                hint="Install the license first, or ask the vendor which license the top-up is for",
            )
        if not 0 < amount <= MAX_AMOUNT:
            raise ConfigError(
                f"Top-up {topup_id!r} has an amount out of range",
                expected=f"an amount from 1 to {MAX_AMOUNT}",
                found=str(amount),
            )
        return self.meters.apply_topup(
            topup_id=topup_id,
            license_id=license_id,
            meter=meter,
            policy=lic.meters[meter],
            amount=amount,
            now=now,
        )

    def undo_topup(self, topup: AppliedTopup) -> None:
        self.meters.topups.pop(topup.topup_id, None)

    def import_receipt(self, receipt: ReceiptInfo) -> bool:
        """Take a newer receipt into account; older or equal ones change nothing."""
        if self.last_receipt is not None and receipt.vendor_time <= self.last_receipt.vendor_time:
            return False
        self.last_receipt = receipt
        return True

    def prune_idempotency(self, now: datetime) -> list[str]:
        return self.meters.prune_keys(now, self.idempotency_ttl)

    # --------------------------------------------------------------- views
    def seats_view(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        for feature in sorted(self.feature_names()):
            offering = [lic for lic in self.ordered() if feature in lic.features]
            usable = [lic for lic in offering if self.blocked(lic, now) is None]
            live = sorted(self.seats.live(feature, now), key=lambda x: (x.issued_at, x.lease_id))
            # Why nothing is granted when no license offering the feature is usable
            # (suspended, revoked, expired, report overdue): said, not shown as 0 of 0.
            err = self.blocked(offering[0], now) if offering and not usable else None
            out.append(
                {
                    "feature": feature,
                    "refused": None if err is None else err.problem,
                    "seats": sum(lic.features[feature].seats for lic in usable),
                    "overdraft": sum(lic.features[feature].overdraft for lic in usable),
                    "in_use": len(live),
                    "borrowed": sum(1 for x in live if x.borrowed),
                    "denials": self.seats.denials.get(feature, 0),
                    "policy_denials": self.seats.policy_denials.get(feature, 0),
                    "leases": live,
                }
            )
        return out

    def balances(self, now: datetime) -> list[dict[str, Any]]:
        out = []
        for lic in self.ordered():
            for meter, policy in sorted(lic.meters.items()):
                period = period_key(policy.period, now)
                used = self.meters.used(lic.license_id, meter, period)
                limit = self.meters.limit(lic.license_id, meter, policy, period)
                start = period_start(period)
                out.append(
                    {
                        "meter": meter,
                        "license_id": lic.license_id,
                        "limit": limit,
                        "period": policy.period,
                        "period_start": start.isoformat() if start else None,
                        "used": used,
                        "remaining": None if limit is None else max(0, limit - used),
                        "over_limit": policy.over_limit,
                    }
                )
        return out

    def report_status(self, now: datetime) -> dict[str, Any]:
        due = [(d, lic) for lic in self.ordered() if (d := self.report_deadline(lic)) is not None]
        if not due:
            return {"required": False, "due": None, "deadline": None, "overdue": False}
        deadline, lic = min(due, key=lambda x: x[0])
        return {
            "required": True,
            "due": self.report_due(lic).isoformat(),  # type: ignore[union-attr]
            "deadline": deadline.isoformat(),
            "overdue": now > deadline,
        }


__all__ = [
    "BorrowDecision",
    "Engine",
    "SeatLease",
    "ReceiptInfo",
    "SeatDecision",
    "UsageDecision",
    "UsageResult",
]
