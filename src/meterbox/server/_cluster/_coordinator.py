"""Seats shared through etcd: fixed slot keys, one etcd lease per seat, quorum watch.

Keys (``<lic>`` and ``<feature>`` percent-encoded)::

    /meterbox/<lic>/seats/<feature>/regular/<n>    n = 0 .. seats-1
    /meterbox/<lic>/seats/<feature>/overdraft/<n>  n = 0 .. overdraft-1
    /meterbox/<lic>/members/<node>                 the node is up (its session lease)
    /meterbox/<lic>/nodes/<node>                   the node has served this license
    /meterbox/<lic>/queue/<feature>/<node>/<id>    a waiter (its node's session lease)

Invariant: a lease is granted only after an etcd transaction created one of its
pool's slot keys (``create_revision == 0``). Each slot key exists at most once, and
only ``capacity`` slot keys exist per pool, so whatever the interleaving of nodes the
seats held never exceed seats + overdraft. A slot key carries its own etcd lease of
``lease_seconds + GRACE_S``, refreshed on every renewal, and is deleted once the
lease's end is on this node's ledger; a node that dies leaves its slots to run out
with their etcd leases, never before the lease would have ended on its own ledger.

Options and queue (docs/adr/0034): a slot key's value names its holder
(:mod:`._seats_core`); a new seat's claim decides the site's options over every
holder of the feature and the queue's order over every waiter, and its transaction
creates the slot only if neither changed since they were read.

Quorum: every :data:`TICK_S` the node refreshes its session lease and reads the
member list linearizably; any failure, or any failed etcd call of a grant, makes
:meth:`EtcdCoordinator.require_quorum` refuse at once until a tick succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

from meterbox.errors import LeaseNotFound, NoSeatAvailable
from meterbox.server._cluster._etcd import (
    BUCKETS,
    Etcd,
    EtcdDown,
    none_older_under,
    none_under,
    unchanged_since,
)
from meterbox.server._cluster._protocol import (
    Admit,
    ClusterStats,
    ClusterUnavailableError,
    ClusterView,
    Member,
    QueueEntry,
    QuorumListener,
    SeatPool,
)
from meterbox.server._cluster._seats_core import (
    SlotHolder,
    Waiter,
    holder_of,
    holders_as_leases,
    places_ahead,
    queue_guard,
    slot_value,
)
from meterbox.server._core.seats import SeatLease

log = logging.getLogger("meterbox.server.cluster")

_T = TypeVar("_T")

ROOT = "/meterbox/"
#: Seconds a seat's etcd lease outlives the lease it stands for (clock and call slack).
GRACE_S = 2
#: Seconds between quorum checks; a node notices a lost quorum within TICK_S + timeout.
TICK_S = 0.5
#: TTL of the node's session lease (its membership key).
SESSION_TTL_S = 3
#: Retry-After of a 503 answered for lack of quorum.
RETRY_AFTER_S = 1
#: Ticks between counts of the seats held cluster-wide (one keys-only read per license).
SEAT_COUNT_TICKS = 10
#: Transaction attempts for one checkout before the node answers 503 (contention).
MAX_CLAIM_ROUNDS = 8
#: Seconds one seat operation or quorum check may spend on etcd, all calls and members
#: together: a cut-off node answers 503 within this, not a timeout per call and member.
OP_BUDGET_S = 2.0


def _seg(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def feature_prefix(pool_license: str, feature: str) -> str:
    """Every slot key of one feature of one license (regular and overdraft)."""
    return f"{ROOT}{_seg(pool_license)}/seats/{_seg(feature)}/"


def queue_prefix(queue_license: str, feature: str) -> str:
    """The cluster's queue for ``feature``, under its first license (docs/adr/0034)."""
    return f"{ROOT}{_seg(queue_license)}/queue/{_seg(feature)}/"


def pool_prefix(pool_license: str, feature: str, overdraft: bool) -> str:
    kind = "overdraft" if overdraft else "regular"
    return f"{ROOT}{_seg(pool_license)}/seats/{_seg(feature)}/{kind}/"


@dataclass(frozen=True)
class _Held:
    key: str
    etcd_lease: int
    ttl: int


def unavailable(problem: str) -> ClusterUnavailableError:
    return ClusterUnavailableError(
        "This node cannot reach etcd quorum, so it grants no new seats or usage",
        expected="a majority of the etcd cluster answering",
        found=problem,
        hint="Retry on another node of the cluster (GET /v1/cluster lists them); "
        "this node resumes once etcd answers again",
    )


class EtcdCoordinator:
    """:class:`~meterbox.server._cluster.Coordinator` over etcd; see the module docstring."""

    def __init__(
        self,
        etcd: Etcd,
        *,
        url: str,
        tick: float = TICK_S,
        session_ttl: int = SESSION_TTL_S,
    ) -> None:
        self.etcd = etcd
        self.url = url
        self.node = ""
        self.license_ids: tuple[str, ...] = ()
        self._tick = tick
        self._session_ttl = session_ttl
        self._session = 0
        #: Goes up each time etcd forgot the session lease and a new one was granted.
        self._generation = 0
        #: Monotonic time until which etcd is known to keep the session lease alive.
        self._alive_until = 0.0
        self._held: dict[str, _Held] = {}
        self._quorum = False
        self._problem: str | None = "not started"
        self._last_ok = 0.0
        self._members: tuple[Member, ...] = ()
        self._task: asyncio.Task[None] | None = None
        self.on_quorum: QuorumListener | None = None
        self.cluster_id: str | None = None
        self.counters = {"claims": 0, "claim_conflicts": 0, "quorum_losses": 0}
        #: node -> monotonic time this node last saw it alive in etcd.
        self._seen: dict[str, float] = {}
        self._beats = 0
        self._seats_held: dict[tuple[str, str], int] = {}
        self._waiters = 0

    # ---------------------------------------------------------------- protocol
    @property
    def mode(self) -> Literal["single", "etcd"]:
        return "etcd"

    @property
    def shared(self) -> bool:
        return True

    def view(self) -> ClusterView:
        now = time.monotonic()
        members = tuple(
            replace(m, seen_ago_s=now - self._seen[m.node] if m.node in self._seen else None)
            for m in self._members or (Member(self.node, self.url, self._quorum),)
        )
        return ClusterView(
            mode="etcd",
            node=self.node,
            members=members,
            quorum=self._quorum,
            problem=None if self._quorum else self._problem,
            since_quorum_s=time.monotonic() - self._last_ok if self._last_ok else None,
            extra={
                "endpoints": [str(e) for e in self.etcd.endpoints],
                "seats_held": len(self._held),
                "cluster_id": self.cluster_id,
            },
        )

    def stats(self) -> ClusterStats:
        return ClusterStats(
            quorum=self._quorum,
            members=sum(1 for m in self._members if m.alive) if self._quorum else 0,
            quorum_lost_total=self.counters["quorum_losses"],
            etcd_seconds=self.etcd.times.snapshot(),
            buckets=BUCKETS,
            seats_held=dict(self._seats_held),
        )

    # ------------------------------------------------ the session lease (NodeLease)
    # Quota blocks hang their live keys on this same lease (docs/adr/0032): one etcd
    # lease per node, so a node that dies loses its membership and its blocks together.
    @property
    def lease_id(self) -> int:
        return self._session

    @property
    def generation(self) -> int:
        return self._generation

    def fresh(self) -> bool:
        """True while etcd is known to keep the session lease alive.

        A margin of one tick: etcd may count the TTL from slightly before this node
        saw the keepalive's answer.
        """
        return bool(self._session) and time.monotonic() < self._alive_until - self._tick

    def on_quorum_change(self, listener: QuorumListener) -> None:
        self.on_quorum = listener

    def require_quorum(self) -> None:
        if not self._quorum:
            raise unavailable(self._problem or "no quorum")

    async def start(self, node: str, license_ids: Iterable[str]) -> None:
        self.node = node
        self.license_ids = tuple(license_ids)
        await self._round()  # a first answer (or its absence) before the first request
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session:
            with contextlib.suppress(EtcdDown):
                await asyncio.to_thread(self.etcd.revoke, self._session)

    async def claim_seat(
        self,
        lease: SeatLease,
        pools: Sequence[SeatPool],
        *,
        admit: Admit | None = None,
        waiter: QueueEntry | None = None,
    ) -> SeatLease:
        self.require_quorum()
        try:
            return await asyncio.to_thread(
                self.bounded, self._claim, lease, pools, admit, waiter, queued=True
            )
        except EtcdDown as exc:
            self._lost(str(exc))
            raise unavailable(str(exc)) from exc

    async def enqueue(self, license_id: str, feature: str, client_id: str) -> QueueEntry | None:
        self.require_quorum()
        self._waiters += 1
        key = (
            f"{queue_prefix(license_id, feature)}{_seg(self.node)}/{self._session}-{self._waiters}"
        )
        value = json.dumps({"node": self.node, "client": client_id}).encode()
        try:
            revision = await asyncio.to_thread(
                self.bounded, self.etcd.create_guarded, key, value, self._session, ()
            )
        except EtcdDown as exc:
            self._lost(str(exc))
            raise unavailable(str(exc)) from exc
        return QueueEntry(key, revision) if revision else None

    async def places_ahead(self, license_id: str, feature: str, entry: QueueEntry | None) -> int:
        self.require_quorum()
        try:
            kvs, _ = await asyncio.to_thread(
                self.bounded, self.etcd.range_at, queue_prefix(license_id, feature)
            )
        except EtcdDown as exc:
            self._lost(str(exc))
            raise unavailable(str(exc)) from exc
        mine = Waiter(entry.key, entry.create_revision) if entry is not None else None
        return places_ahead([Waiter(kv.key, kv.create_revision) for kv in kvs], mine)

    async def dequeue(self, entry: QueueEntry | None) -> None:
        if entry is None:
            return
        try:
            await asyncio.to_thread(self.bounded, self.etcd.delete, entry.key)
        except EtcdDown as exc:  # the key goes with the node's session lease
            log.warning("waiter %s left in the queue until its session ends: %s", entry.key, exc)

    async def renew_seat(self, lease: SeatLease, pools: Sequence[SeatPool]) -> None:
        self.require_quorum()
        try:
            await asyncio.to_thread(self.bounded, self._renew, lease, pools)
        except EtcdDown as exc:
            self._lost(str(exc))
            raise unavailable(str(exc)) from exc

    def _renew(self, lease: SeatLease, pools: Sequence[SeatPool]) -> None:
        held = self._held.get(lease.lease_id)
        fits = held is not None and lease.lease_seconds + GRACE_S <= held.ttl
        if held is not None and fits and self.etcd.keepalive(held.etcd_lease) > 0:
            return
        # Either the seat's etcd lease ran out (the node was cut off longer than the
        # lease: another node may hold that slot now) or this node does not hold it.
        # Not held here (adoption failed, or a longer lease than the slot's TTL): the
        # old slot, if any, runs out with its etcd lease; the lease takes a fresh one.
        own = [
            p for p in pools if (p.license_id, p.overdraft) == (lease.license_id, lease.overdraft)
        ]
        try:
            self._claim(lease, own, None, None, queued=False)
        except NoSeatAvailable:
            self._held.pop(lease.lease_id, None)
            raise _no_shared_seat(lease) from None
        if held is not None:
            with contextlib.suppress(EtcdDown):
                self.etcd.revoke(held.etcd_lease)

    async def release_seat(self, lease_id: str) -> None:
        held = self._held.pop(lease_id, None)
        if held is None:
            return
        try:
            await asyncio.to_thread(self.bounded, self.etcd.revoke, held.etcd_lease)
        except EtcdDown as exc:
            log.warning("seat of %s left to run out in etcd: %s", lease_id, exc)

    async def adopt_seats(self, leases: Sequence[SeatLease]) -> list[SeatLease]:
        if not leases:
            return []
        self.require_quorum()
        try:
            return await asyncio.to_thread(self.bounded, self._adopt, leases)
        except EtcdDown as exc:
            self._lost(str(exc))
            raise unavailable(str(exc)) from exc

    # ---------------------------------------------------------------- seats
    def bounded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run ``fn`` (in a worker thread) with every etcd call inside ``OP_BUDGET_S``."""
        with self.etcd.deadline(OP_BUDGET_S):
            return fn(*args, **kwargs)

    def _claim(
        self,
        lease: SeatLease,
        pools: Sequence[SeatPool],
        admit: Admit | None,
        waiter: QueueEntry | None,
        *,
        queued: bool,
    ) -> SeatLease:
        """Create one free slot key for ``lease`` (see :meth:`_claim_slot`)."""
        ttl = lease.lease_seconds + GRACE_S
        etcd_lease = self.etcd.grant(ttl)
        value = slot_value(SlotHolder.of(self.node, lease))
        try:
            got = self._claim_slot(lease, pools, value, etcd_lease, admit, waiter, queued=queued)
        except BaseException:
            with contextlib.suppress(EtcdDown):
                self.etcd.revoke(etcd_lease)
            raise
        if got is None:
            self.etcd.revoke(etcd_lease)
            raise _cluster_full(lease, pools)
        key, pool = got
        self._held[lease.lease_id] = _Held(key, etcd_lease, ttl)
        self.counters["claims"] += 1
        return replace(lease, license_id=pool.license_id, overdraft=pool.overdraft)

    def _claim_slot(
        self,
        lease: SeatLease,
        pools: Sequence[SeatPool],
        value: bytes,
        etcd_lease: int,
        admit: Admit | None,
        waiter: QueueEntry | None,
        *,
        queued: bool,
    ) -> tuple[str, SeatPool] | None:
        """The slot key created for ``lease`` and its pool; None when every slot is held.

        Each round reads the feature's slots (every license of ``pools``) and, for a
        new checkout (``queued``), its queue; decides the options (``admit``) over all
        holders and the queue's order; then creates the first free slot in one
        transaction that also compares that the slots read are unchanged (only with
        ``admit``: a maximum or reservation depends on them) and that the queue still
        lets this lease go first. A failed transaction means another node moved in
        between: the round starts over.
        """
        usable = [p for p in pools if p.capacity > 0]
        if not usable:
            return None
        prefixes = sorted({feature_prefix(p.license_id, p.feature) for p in usable})
        queue = queue_prefix(pools[0].license_id, lease.feature)
        for _ in range(MAX_CLAIM_ROUNDS):
            guards: list[dict[str, Any]] = []
            taken: set[str] = set()
            holders: list[SlotHolder] = []
            for prefix in prefixes:
                kvs, revision = self.etcd.range_at(prefix)
                taken.update(kv.key for kv in kvs)
                holders += [holder_of(kv.key, kv.value) for kv in kvs]
                if admit is not None:
                    guards.append(unchanged_since(prefix, revision))
            if queued:
                kvs, _ = self.etcd.range_at(queue)
                waiters = [Waiter(kv.key, kv.create_revision) for kv in kvs]
                mine = Waiter(waiter.key, waiter.create_revision) if waiter else None
                guard = queue_guard(waiters, mine)
                if guard is None:
                    raise _queued(lease, pools, places_ahead(waiters, mine))
                guards.append(
                    none_under(queue)
                    if guard.kind == "empty"
                    else none_older_under(queue, guard.create_revision)
                )
            if admit is not None:
                admit(
                    holders_as_leases(
                        lease.feature, (h for h in holders if h.lease != lease.lease_id)
                    )
                )
            free = [
                (prefix + str(n), pool)
                for pool in usable
                for prefix in [pool_prefix(pool.license_id, pool.feature, pool.overdraft)]
                for n in range(pool.capacity)
                if prefix + str(n) not in taken
            ]
            if not free:
                return None
            # With ``admit`` a lost race changes the slots read, so the next round reads
            # again; without, the next free slot is tried at once (the queue's guard
            # fails all of them alike if a waiter came).
            for key, pool in free if admit is None else free[:1]:
                if self.etcd.create_guarded(key, value, etcd_lease, guards):
                    return key, pool
                self.counters["claim_conflicts"] += 1
        raise EtcdDown(f"{MAX_CLAIM_ROUNDS} rounds of checkouts racing for {prefixes[0]}")

    def _adopt(self, leases: Sequence[SeatLease]) -> list[SeatLease]:
        lost = []
        slots: dict[str, dict[str, tuple[str, int]]] = {}
        for lease in leases:
            prefix = pool_prefix(lease.license_id, lease.feature, lease.overdraft)
            if prefix not in slots:
                slots[prefix] = {}
                for kv in self.etcd.range_prefix(prefix):
                    holder = holder_of(kv.key, kv.value)
                    if holder.node == self.node:
                        slots[prefix][holder.lease] = (kv.key, kv.lease)
            found = slots[prefix].get(lease.lease_id)
            if found is None or not found[1]:
                lost.append(lease)
                continue
            remaining, granted = self.etcd.time_to_live(found[1])
            if remaining <= 0:
                lost.append(lease)
                continue
            self._held[lease.lease_id] = _Held(found[0], found[1], granted)
        return lost

    # ---------------------------------------------------------------- quorum
    def _lost(self, problem: str) -> None:
        if self._quorum:
            self.counters["quorum_losses"] += 1
            log.warning("etcd quorum lost: %s", problem)
            if self.on_quorum is not None:
                self.on_quorum(False, problem)
        self._quorum = False
        self._problem = problem

    def _regained(self) -> None:
        if not self._quorum:
            log.warning("etcd quorum regained")
            if self.on_quorum is not None:
                self.on_quorum(True, None)
        self._quorum = True
        self._problem = None
        self._last_ok = time.monotonic()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            await self._round()

    async def _round(self) -> None:
        try:
            members = await asyncio.to_thread(self.bounded, self._beat)
        except EtcdDown as exc:
            self._lost(str(exc))
        except Exception as exc:  # noqa: BLE001 - the watch must outlive any one answer
            self._lost(f"{type(exc).__name__}: {exc}")
        else:
            self._members = members
            now = time.monotonic()
            for m in members:
                if m.alive:
                    self._seen[m.node] = now
            self._regained()

    def _beat(self) -> tuple[Member, ...]:
        """Refresh this node's session and read the member list; both need quorum."""
        if self.cluster_id is None:
            self.cluster_id = self.etcd.cluster_id() or None
        sent = time.monotonic()
        ttl = self.etcd.keepalive(self._session) if self._session else 0
        if ttl <= 0:
            if self._session:
                # Every key on the old lease (membership, quota blocks' live keys) is gone.
                self._generation += 1
            self._session = self.etcd.grant(self._session_ttl)
            ttl = self._session_ttl
            doc = json.dumps({"node": self.node, "url": self.url}).encode()
            for lic in self.license_ids:
                self.etcd.put(f"{ROOT}{_seg(lic)}/members/{_seg(self.node)}", doc, self._session)
                self.etcd.put(f"{ROOT}{_seg(lic)}/nodes/{_seg(self.node)}", doc)
        self._alive_until = sent + ttl
        alive: set[str] = set()
        known: dict[str, str] = {self.node: self.url}
        for lic in self.license_ids:
            for kv in self.etcd.range_prefix(f"{ROOT}{_seg(lic)}/members/"):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    doc = json.loads(kv.value)
                    alive.add(str(doc["node"]))
                    known[str(doc["node"])] = str(doc["url"])
            for kv in self.etcd.range_prefix(f"{ROOT}{_seg(lic)}/nodes/"):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    doc = json.loads(kv.value)
                    known.setdefault(str(doc["node"]), str(doc["url"]))
        alive.add(self.node)
        if self._beats % SEAT_COUNT_TICKS == 0:
            self._seats_held = self._count_seats()
        self._beats += 1
        return tuple(Member(n, known[n], n in alive) for n in sorted(known))

    def _count_seats(self) -> dict[tuple[str, str], int]:
        """Slot keys held per (license, feature) by every node: one keys-only read each."""
        held: dict[tuple[str, str], int] = {}
        for lic in self.license_ids:
            prefix = f"{ROOT}{_seg(lic)}/seats/"
            for kv in self.etcd.range_prefix(prefix, keys_only=True):
                feature = urllib.parse.unquote(kv.key[len(prefix) :].split("/", 1)[0])
                held[lic, feature] = held.get((lic, feature), 0) + 1
        return held


def _no_shared_seat(lease: SeatLease) -> LeaseNotFound:
    return LeaseNotFound(
        f"Lease {lease.lease_id!r} no longer holds a seat of the cluster",
        expected="a lease whose shared seat is still held in etcd",
        found="its etcd lease ran out while this node could not renew it",
        hint="Check out a seat again",
    )


def _queued(lease: SeatLease, pools: Sequence[SeatPool], ahead: int) -> NoSeatAvailable:
    denied = NoSeatAvailable(
        f"{ahead} client(s) wait for a seat of {lease.feature!r} ahead of this request",
        expected="a free seat and no client queued ahead on any node of the cluster",
        found=f"{ahead} queued in the cluster",
        hint="Check out with wait_seconds to queue (FIFO across the cluster), or retry later",
    )
    denied.license_id = pools[0].license_id if pools else lease.license_id
    return denied


def _cluster_full(lease: SeatLease, pools: Sequence[SeatPool]) -> NoSeatAvailable:
    seats = sum(p.capacity for p in pools if not p.overdraft)
    overdraft = sum(p.capacity for p in pools if p.overdraft)
    denied = NoSeatAvailable(
        f"No seat is free for feature {lease.feature!r} in the cluster",
        expected=f"a free seat among {seats} seats and {overdraft} overdraft seats",
        found="all held by the nodes of the cluster",
        hint="Retry after a lease is released or runs out, or ask the vendor for more seats",
    )
    denied.license_id = pools[0].license_id if pools else lease.license_id
    return denied
