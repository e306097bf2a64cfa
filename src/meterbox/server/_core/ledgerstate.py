"""The server's enforcement state as a fold over ledger records. Pure.

:class:`LedgerState` is the server's :class:`~meterbox.ledger.LedgerFolder`: the
ledger writer hands it every durable record in commit order and writes its
:meth:`~LedgerState.snapshot` as the STATE record after every EPOCH record. What it
holds is therefore a function of the ledger alone:

* usage per (license, meter, period), give-backs capped at what was used, as the
  engine decides them;
* applied top-ups; live leases (checkout, renewals, release or expiry) and the API
  key that owns each, borrowed leases among them (borrow, then return or expiry)
  with their machine digest; removals (who, why) of leases that would still be live,
  so a removed holder is told why after a restart;
* each license's standing under the vendor's notices (suspended, resumed, revoked),
  by :func:`meterbox.server._core.standing.apply`, the rule the engine applies;
* the last receipt (vendor time and acknowledged seq), which moves the report
  deadline; the clock floor (the latest record time folded);
* in a cluster, the quota blocks this node holds and the units it granted from each
  (:class:`~meterbox.server._cluster._quota_core.NodeBook`, the rule the live quota
  path runs), so a node that restarts settles them at what it really granted;
* per Cryptolens data object, the units it charged (give-backs capped, as
  :func:`meterbox.compat.rules.charged_from_records` computes them), and the
  node-locked activations.

Every cache file (``state.db``, ``cryptolens.db``) is compared with it at open and
rebuilt from it when they differ (:mod:`meterbox.server._rebuild`); the comparison
itself is :func:`compare`, here, so it is tested without files.

Periods are computed from the record's wall time, as the crash replay always did;
the engine computes them from license time, which differs only when the wall clock
was set back across a month boundary.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from meterbox.compat.rules import CLIENT_PREFIX
from meterbox.errors import FormatError
from meterbox.ledger import RecordType
from meterbox.ledger.records import (
    MAX_REBUILT_ITEMS,
    LicenseRevoked,
    LicenseSuspended,
    MachineActivated,
    ReceiptImported,
    SeatBorrowed,
    SeatCheckout,
    SeatRelease,
    SeatRemoved,
    SeatRenew,
    State,
    TopupImported,
    Usage,
    parse_payload,
)
from meterbox.server._cluster._quota_core import NodeBook, OpenBlock
from meterbox.server._core.meters import AppliedTopup, period_key
from meterbox.server._core.policy import LicensePolicy
from meterbox.server._core.seats import Removal, SeatLease
from meterbox.server._core.standing import STATUSES, Standing
from meterbox.server._core.standing import apply as apply_notice
from meterbox.server._errors import LicenseAlreadyRevoked, NoticeOutOfOrder

_MS: Final = 1000
_USAGE_TYPES: Final = frozenset({RecordType.USAGE, RecordType.USAGE_DECREMENT})
_QUOTA_TYPES: Final = frozenset({RecordType.QUOTA_BLOCK_TAKEN, RecordType.QUOTA_BLOCK_RETURNED})
_LEASE_ENDS: Final = frozenset(
    {
        RecordType.SEAT_RELEASE,
        RecordType.SEAT_EXPIRE,
        RecordType.SEAT_REMOVED,
        RecordType.SEAT_RETURNED,
    }
)

#: The records whose change ``state.db`` holds (usage, leases, top-ups, the receipt):
#: each is pending from its ledger commit to its state commit (docs/adr/0044).
STATE_CACHED: Final = (
    _USAGE_TYPES
    | _LEASE_ENDS
    | {
        RecordType.SEAT_CHECKOUT,
        RecordType.SEAT_BORROWED,
        RecordType.SEAT_RENEW,
        RecordType.TOPUP_IMPORTED,
        RecordType.RECEIPT_IMPORTED,
    }
)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / _MS, UTC)


def _ms(t: datetime) -> int:
    return round(t.timestamp() * _MS)


@dataclass(frozen=True)
class FoldLease:
    lease_id: str
    feature: str
    client_id: str
    license_id: str
    issued_ms: int
    expires_ms: int
    lease_seconds: int
    overdraft: bool
    #: The API key that checked the lease out (None: none, or a record from before keys).
    key_id: str | None = None
    #: Borrowed leases only: the machine digest of the borrow token.
    machine: str | None = None


@dataclass(frozen=True)
class FoldRemoval:
    """A lease the administrator (or a vendor notice) ended, and who and why."""

    lease: FoldLease
    removed_by: str
    reason: str | None
    at_ms: int


@dataclass
class StateView:
    """The enforcement-relevant content of a state, whichever side it comes from."""

    usage: dict[tuple[str, str, str], int] = field(default_factory=dict)
    topups: dict[str, tuple[str, str, int, str, int]] = field(default_factory=dict)
    leases: dict[str, FoldLease] = field(default_factory=dict)
    charged: dict[tuple[str, str, int], int] = field(default_factory=dict)
    machines: set[tuple[str, str]] = field(default_factory=set)
    #: license id -> (notice sequence, status, notice id, reason or "", applied at ms)
    standings: dict[str, tuple[int, str, str, str, int]] = field(default_factory=dict)
    removed: dict[str, FoldRemoval] = field(default_factory=dict)
    clock_floor_ms: int = 0
    head_seq: int = -1
    #: (vendor time ms, acknowledged seq, receipt id)
    receipt: tuple[int, int, str] | None = None
    #: The quota blocks this node holds (a cluster node; empty on a single server).
    quota: NodeBook = field(default_factory=NodeBook)


class LedgerState:
    """The fold (see module docs). Not thread-safe by itself: the writer's committer
    thread is the only one that applies; readers read single entries."""

    def __init__(
        self,
        licenses: Mapping[str, LicensePolicy] | None = None,
        *,
        fallback: StateView | None = None,
    ) -> None:
        """``fallback`` is the base when the ledger's last epoch holds no STATE record
        (a ledger from before STATE records): the cache's view, up to its ``head_seq``."""
        self.licenses: dict[str, LicensePolicy] = dict(licenses or {})
        self._fallback = fallback
        self.view = StateView()
        #: Set by :meth:`restore`: where the fold started (None = no STATE, not the start).
        self.restored: State | None = None
        self.partial = False
        self._watch: int | None = None
        self._ahead: frozenset[int] = frozenset()
        #: Told the seq of each durable record of a :data:`STATE_CACHED` type, in the
        #: writer's committer thread, before its writer answers (the server's watermark).
        self.on_durable: Callable[[int], None] | None = None
        self._months: dict[int, str] = {}
        self.at_watch: StateView | None = None

    def install(self, policy: LicensePolicy) -> None:
        self.licenses[policy.license_id] = policy

    # -------------------------------------------------------- LedgerFolder
    def watch(self, seq: int, ahead: Collection[int] = frozenset()) -> None:
        """Keep a copy of the state as of record ``seq`` (the seq a cache says it reflects)
        and of the records ``ahead`` of it that the cache holds too (ADR 0044)."""
        self._watch = seq
        self._ahead = frozenset(s for s in ahead if s > seq)
        self.at_watch = None

    def restore(self, state: State | None) -> None:
        self.restored = state
        self.partial = state is None
        if state is not None:
            self.view = view_from_state(state)
        else:
            self.view = copy.deepcopy(self._fallback) if self._fallback else StateView()
        if self._watch is not None and self._watch <= self.view.head_seq:
            self.at_watch = copy.deepcopy(self.view)

    def snapshot(self) -> State:
        v = self.view
        floor = v.clock_floor_ms
        # Removals of leases that have run out by now are told as "ran out": drop them.
        v.removed = {k: r for k, r in v.removed.items() if r.lease.expires_ms > floor}
        return State(
            usage=tuple((k[0], k[1], k[2], n) for k, n in sorted(v.usage.items()) if n),
            topups=tuple((tid, *t) for tid, t in sorted(v.topups.items())),
            leases=tuple(
                _lease_row(x)
                for _, x in sorted(v.leases.items())
                # A lease past its expiry grants nothing; its expiry record may follow.
                if x.expires_ms > floor
            ),
            charged=tuple((k[0], k[1], k[2], n) for k, n in sorted(v.charged.items()) if n),
            machines=tuple(sorted(v.machines)),
            lease_keys=tuple(
                (x.lease_id, x.key_id)
                for _, x in sorted(v.leases.items())
                if x.expires_ms > floor and x.key_id is not None
            ),
            standings=tuple((lid, *t) for lid, t in sorted(v.standings.items())),
            # A removal matters while the lease would have been live: its holder may
            # still heartbeat. After that the holder is told the lease ran out.
            removals=tuple(
                (
                    *_lease_row(r.lease),
                    r.lease.key_id or "",
                    r.removed_by,
                    r.reason or "",
                    r.at_ms,
                )
                for _, r in sorted(v.removed.items())
            ),
            borrowed=tuple(
                (x.lease_id, x.machine)
                for _, x in sorted(v.leases.items())
                if x.machine is not None and x.expires_ms > floor
            ),
            # In the book's order (oldest first): usage draws on the oldest block first.
            quota_blocks=tuple(
                (b.block_id, *b.pool, b.size, b.used) for b in v.quota.open.values()
            ),
            clock_floor_ms=floor,
            head_seq=v.head_seq,
            receipt_ms=None if v.receipt is None else v.receipt[0],
            receipt_seq=None if v.receipt is None else v.receipt[1],
            receipt_id=None if v.receipt is None or not v.receipt[2] else v.receipt[2],
        )

    def apply(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int, seq: int) -> None:
        if self._watch is not None and self.at_watch is None and seq > self._watch:
            self.at_watch = copy.deepcopy(self.view)
        if self._ahead and seq in self._ahead and self.at_watch is not None:
            # A record the cache committed ahead of its watermark: the copy as of the
            # cache holds it too.
            view, self.view = self.view, self.at_watch
            try:
                self._step(rtype, payload, wall_ms, seq)
            finally:
                self.at_watch, self.view = self.view, view
        self._step(rtype, payload, wall_ms, seq)
        if self.on_durable is not None and rtype in STATE_CACHED:
            self.on_durable(seq)

    def _step(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int, seq: int) -> None:
        v = self.view
        v.clock_floor_ms = max(v.clock_floor_ms, wall_ms)
        if self.partial and self._fallback is not None and seq <= self._fallback.head_seq:
            return  # already in the fallback base
        v.head_seq = max(v.head_seq, seq)
        # An authentic record this fold cannot read changes no enforcement state: the
        # server never writes such a record, so there is nothing it decided. (try/except,
        # not contextlib.suppress: this runs for every record the server commits.)
        try:
            self._apply(rtype, payload, wall_ms)
            if rtype in _QUOTA_TYPES or (rtype in _USAGE_TYPES and v.quota.open):
                self._apply_quota(rtype, payload)
        except FormatError:
            pass

    def _apply_usage(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int) -> None:
        v = self.view
        # The hot path of a rebuild (most records are usage): the keys Usage.from_map
        # reads, checked the same way, without building the dataclass.
        lid, name, amount = payload.get("l"), payload.get("m"), payload.get("a")
        if lid is None:
            return
        if not (isinstance(lid, str) and isinstance(name, str) and type(amount) is int):
            Usage.from_map(payload)  # raises the FormatError that names the key
            return
        slot = (lid, name, self._period(lid, name, wall_ms))
        before = v.usage.get(slot, 0)
        decrement = rtype == RecordType.USAGE_DECREMENT
        v.usage[slot] = before - min(amount, before) if decrement else before + amount
        client = payload.get("c")
        if isinstance(client, str) and client.startswith(CLIENT_PREFIX):
            obj = client[len(CLIENT_PREFIX) :]
            if obj.isdigit():
                key = (lid, name, int(obj))
                charged = v.charged.get(key, 0)
                v.charged[key] = charged - min(amount, charged) if decrement else charged + amount

    def _apply_quota(self, rtype: RecordType, payload: Mapping[str, Any]) -> None:
        # Called for usage only while this node holds blocks (a cluster node; never a
        # single server, so its hot path parses nothing more).
        quota = self.view.quota
        quota.apply(parse_payload(rtype, payload))
        # Settled blocks are not carried by STATE either; the fold keeps open ones.
        quota.settled.clear()

    def _apply(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int) -> None:
        v = self.view
        if rtype in _USAGE_TYPES:
            self._apply_usage(rtype, payload, wall_ms)
        elif rtype == RecordType.TOPUP_IMPORTED:
            t = TopupImported.from_map(payload)
            lid = t.license_id or ""
            period = self._period(lid, t.meter, wall_ms)
            v.topups.setdefault(t.topup_id, (lid, t.meter, t.amount, period, wall_ms))
        elif rtype in (RecordType.SEAT_CHECKOUT, RecordType.SEAT_BORROWED):
            c: SeatCheckout = (
                SeatBorrowed.from_map(payload)
                if rtype == RecordType.SEAT_BORROWED
                else SeatCheckout.from_map(payload)
            )
            if c.lease_id is None or c.license_id is None or c.expires is None:
                return
            expires = c.expires * _MS
            v.leases[c.lease_id] = FoldLease(
                c.lease_id,
                c.feature,
                c.client_id or "",
                c.license_id,
                wall_ms,
                expires,
                max(1, (expires - wall_ms + _MS // 2) // _MS),
                c.overdraft,
                c.key_id,
                c.machine if isinstance(c, SeatBorrowed) else None,
            )
        elif rtype == RecordType.SEAT_RENEW:
            r = SeatRenew.from_map(payload)
            lease = v.leases.get(r.lease_id)
            # The engine renews only a live lease (license time, which is never below
            # the record's wall time, before its expiry); a renewal of a lease already
            # past its expiry is not one the server wrote, and a STATE leaves such a
            # lease out, so ignoring it keeps the fold the same across epochs.
            # A borrowed lease is never renewed: its token's expiry is fixed.
            if (
                lease is not None
                and lease.machine is None
                and r.expires is not None
                and lease.expires_ms > wall_ms
            ):
                v.leases[r.lease_id] = FoldLease(
                    **{**lease.__dict__, "expires_ms": max(lease.expires_ms, r.expires * _MS)}
                )
        elif rtype == RecordType.SEAT_REMOVED:
            rm = SeatRemoved.from_map(payload)
            gone = v.leases.pop(rm.lease_id, None)
            if gone is not None:
                # A removal keeps what its holder is told (the STATE row carries no
                # borrow machine; the engine never removes a borrowed lease anyway).
                kept = FoldLease(**{**gone.__dict__, "machine": None})
                v.removed[rm.lease_id] = FoldRemoval(kept, rm.removed_by, rm.reason, wall_ms)
        elif rtype in _LEASE_ENDS:
            v.leases.pop(SeatRelease.from_map(payload).lease_id, None)
        elif rtype in (RecordType.LICENSE_SUSPENDED, RecordType.LICENSE_REVOKED):
            self._apply_notice(rtype, payload, wall_ms)
        elif rtype == RecordType.RECEIPT_IMPORTED:
            rec = ReceiptImported.from_map(payload)
            at = rec.vendor_ms
            if at is not None and (v.receipt is None or at > v.receipt[0]):
                v.receipt = (at, rec.acked_seq, rec.receipt_id or "")
        elif rtype == RecordType.MACHINE_ACTIVATED:
            m = MachineActivated.from_map(payload)
            v.machines.add((m.license_id, m.machine_code))
        elif rtype == RecordType.MACHINE_DEACTIVATED:
            m = MachineActivated.from_map(payload)
            v.machines.discard((m.license_id, m.machine_code))

    def _apply_notice(self, rtype: RecordType, payload: Mapping[str, Any], wall_ms: int) -> None:
        v = self.view
        if rtype == RecordType.LICENSE_REVOKED:
            n: LicenseSuspended | LicenseRevoked = LicenseRevoked.from_map(payload)
            action = "revoke"
        else:
            n = LicenseSuspended.from_map(payload)
            action = "resume" if n.resumed else "suspend"
        try:
            after = apply_notice(
                _standing(n.license_id, v.standings.get(n.license_id)),
                license_id=n.license_id,
                notice_id=n.notice_id,
                action=action,
                sequence=n.sequence,
                reason=n.reason,
                at=_dt(wall_ms),
            )
        except (NoticeOutOfOrder, LicenseAlreadyRevoked):
            return  # the engine refuses these too: never a record the server writes
        v.standings[n.license_id] = (
            after.sequence,
            after.status,
            after.notice_id,
            after.reason or "",
            wall_ms,
        )

    def _period(self, license_id: str, meter: str, wall_ms: int) -> str:
        """The period key of a record of ``meter`` at ``wall_ms`` (months cached by day)."""
        policy = self.licenses.get(license_id)
        mp = policy.meters.get(meter) if policy is not None else None
        if mp is None or mp.period == "total":
            return "total"
        day = wall_ms // 86_400_000
        key = self._months.get(day)
        if key is None:
            key = self._months[day] = period_key(mp.period, _dt(wall_ms))
        return key

    # --------------------------------------------------------------- reads
    def finish(self) -> StateView:
        """The state now; also fixes :attr:`at_watch` when no record passed the watch."""
        if self.at_watch is None:
            self.at_watch = copy.deepcopy(self.view)
        return self.view

    def charged(self, license_id: str, meter: str, object_id: int) -> int:
        return self.view.charged.get((license_id, meter, object_id), 0)

    def leases(self) -> list[SeatLease]:
        return [
            SeatLease(
                lease_id=x.lease_id,
                feature=x.feature,
                client_id=x.client_id,
                license_id=x.license_id,
                issued_at=_dt(x.issued_ms),
                expires_at=_dt(x.expires_ms),
                lease_seconds=x.lease_seconds,
                overdraft=x.overdraft,
                recorded_at=_dt(x.issued_ms),
                key_id=x.key_id,
                machine=x.machine,
            )
            for x in self.view.leases.values()
        ]

    def standings(self) -> dict[str, Standing]:
        """Each license's standing under the vendor's notices, as the ledger has them."""
        out = {}
        for lid, row in self.view.standings.items():
            standing = _standing(lid, row)
            assert standing is not None
            out[lid] = standing
        return out

    def removals(self) -> dict[str, Removal]:
        """Why each recently removed lease is gone, oldest first (for its next heartbeat)."""
        out = {}
        for lid, r in sorted(self.view.removed.items(), key=lambda kv: kv[1].at_ms):
            x = r.lease
            lease = SeatLease(
                lease_id=x.lease_id,
                feature=x.feature,
                client_id=x.client_id,
                license_id=x.license_id,
                issued_at=_dt(x.issued_ms),
                expires_at=_dt(x.expires_ms),
                lease_seconds=x.lease_seconds,
                overdraft=x.overdraft,
                key_id=x.key_id,
            )
            out[lid] = Removal(lease, r.removed_by, _dt(r.at_ms), r.reason)
        return out

    def topups(self) -> list[AppliedTopup]:
        return [
            AppliedTopup(tid, lid, m, a, p, _dt(at))
            for tid, (lid, m, a, p, at) in self.view.topups.items()
        ]


def _lease_row(x: FoldLease) -> tuple[str, str, str, str, int, int, int, int]:
    return (
        x.lease_id,
        x.feature,
        x.client_id,
        x.license_id,
        x.issued_ms,
        x.expires_ms,
        x.lease_seconds,
        int(x.overdraft),
    )


def _standing(license_id: str, row: tuple[int, str, str, str, int] | None) -> Standing | None:
    if row is None:
        return None
    seq, status, notice_id, reason, at_ms = row
    if status not in STATUSES:
        raise FormatError(
            f"the standing of license {license_id!r} is unknown",
            expected=" or ".join(STATUSES),
            found=repr(status)[:40],
        )
    return Standing(license_id, seq, status, notice_id, reason or None, _dt(at_ms))


def view_from_state(state: State) -> StateView:
    keys = dict(state.lease_keys)
    borrowed = dict(state.borrowed)
    return StateView(
        usage={(lid, m, p): n for lid, m, p, n in state.usage},
        topups={tid: (lid, m, a, p, at) for tid, lid, m, a, p, at in state.topups},
        leases={
            r[0]: FoldLease(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                bool(r[7]),
                key_id=keys.get(r[0]),
                machine=borrowed.get(r[0]),
            )
            for r in state.leases
        },
        standings={r[0]: (r[1], r[2], r[3], r[4], r[5]) for r in state.standings},
        quota=NodeBook(
            open={r[0]: OpenBlock(r[0], (r[1], r[2], r[3]), r[4], r[5]) for r in state.quota_blocks}
        ),
        removed={
            r[0]: FoldRemoval(
                FoldLease(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), r[8] or None),
                r[9],
                r[10] or None,
                r[11],
            )
            for r in state.removals
        },
        charged={(lid, m, o): n for lid, m, o, n in state.charged},
        machines={(lid, c) for lid, c in state.machines},
        clock_floor_ms=state.clock_floor_ms,
        head_seq=state.head_seq,
        receipt=None
        if state.receipt_ms is None
        else (state.receipt_ms, state.receipt_seq or 0, state.receipt_id or ""),
    )


# ------------------------------------------------------------ comparison
@dataclass(frozen=True)
class Difference:
    """How a cache differs from the ledger: ``less`` lines favour the customer."""

    less: tuple[str, ...] = ()
    more: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.less or self.more)

    def items(self) -> tuple[str, ...]:
        lines = self.less + self.more
        if len(lines) <= MAX_REBUILT_ITEMS:
            return lines
        rest = len(lines) - MAX_REBUILT_ITEMS + 1
        return (*lines[: MAX_REBUILT_ITEMS - 1], f"... and {rest} more")


def _lease_differences(lid: str, truth: FoldLease, cache: FoldLease) -> list[str]:
    """What a cached live lease lacks that the ledger's has: each in the customer's favour."""
    out: list[str] = []
    # A lease stripped of its key could be renewed or released by anyone.
    if truth.key_id is not None and cache.key_id != truth.key_id:
        out.append(
            f"lease {lid}: owned by key {truth.key_id} in the ledger, {cache.key_id} in the cache"
        )
    # A borrow the cache forgot could be released (and borrowed again) without its
    # machine.
    if truth.machine != cache.machine:
        out.append(f"lease {lid}: borrowed in the ledger, not so in the cache")
    return out


def compare(truth: StateView, cache: StateView, now_ms: int, *, seats: bool = True) -> Difference:
    """What ``cache`` claims that ``truth`` (the fold) does not, split by who it favours.

    Only what enforcement reads is compared: usage, top-ups, live leases (by id; a
    cache may know a later expiry from a renewal the ledger did not need to record),
    the last receipt, data-object charges and node-locked activations. ``seats=False``
    leaves out what ``state.db`` holds (for ``cryptolens.db``), and the Cryptolens
    parts are compared only when the cache's ``charged``/``machines`` are given.
    """
    less: list[str] = []
    more: list[str] = []
    if seats:
        for slot in sorted(set(truth.usage) | set(cache.usage)):
            t, c = truth.usage.get(slot, 0), cache.usage.get(slot, 0)
            if t != c:
                line = f"usage {'/'.join(slot)}: cache {c}, ledger {t}"
                (less if c < t else more).append(line)
        for tid in sorted(set(truth.topups) ^ set(cache.topups)):
            # A top-up the ledger lacks raises the cache's limit: in the customer's favour.
            if tid in cache.topups:
                less.append(f"top-up {tid}: in the cache, not in the ledger")
            else:
                more.append(f"top-up {tid}: in the ledger, not in the cache")
        live_t = {k for k, x in truth.leases.items() if x.expires_ms > now_ms}
        live_c = {k for k, x in cache.leases.items() if x.expires_ms > now_ms}
        for lid in sorted(live_t - live_c):
            x = truth.leases[lid]
            less.append(f"lease {lid} ({x.license_id}/{x.feature}): live in the ledger only")
        for lid in sorted(live_c - set(truth.leases)):
            more.append(f"lease {lid}: live in the cache only")
        for lid in sorted(live_t & live_c):
            less.extend(_lease_differences(lid, truth.leases[lid], cache.leases[lid]))
        if truth.receipt != cache.receipt:
            t_ms = truth.receipt[0] if truth.receipt else -1
            c_ms = cache.receipt[0] if cache.receipt else -1
            line = f"last receipt: cache {cache.receipt}, ledger {truth.receipt}"
            # A later receipt in the cache would move the report deadline on.
            (less if c_ms > t_ms else more).append(line)
    else:
        for key in sorted(set(truth.charged) | set(cache.charged)):
            t, c = truth.charged.get(key, 0), cache.charged.get(key, 0)
            if t != c:
                line = f"data object {key[0]}/{key[2]} charged: cache {c}, ledger {t}"
                (less if c < t else more).append(line)
        for lid, code in sorted(truth.machines - cache.machines):
            less.append(f"activation {lid}/{code!r}: in the ledger only")
        for lid, code in sorted(cache.machines - truth.machines):
            more.append(f"activation {lid}/{code!r}: in the cache only")
    return Difference(tuple(less), tuple(more))


def has_enforcement(view: StateView, now_ms: int) -> bool:
    """Whether a missing cache loses anything enforcement needs."""
    return (
        any(view.usage.values())
        or bool(view.topups)
        or any(x.expires_ms > now_ms for x in view.leases.values())
        or any(view.charged.values())
        or bool(view.machines)
        or view.receipt is not None
    )


def from_ms(value: int) -> datetime:
    """An aware datetime from Unix ms."""
    return _dt(value)


def ms(t: datetime) -> int:
    """Unix ms of an aware datetime (for callers building a :class:`StateView`)."""
    return _ms(t)
