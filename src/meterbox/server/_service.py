"""The server shell around the pure engine: ordering, durability, persistence, culling.

Request flow (docs/adr/0003-server-state.md):

1. under one ``asyncio.Lock``: read license time, let the engine decide (which
   reserves the seat or the quota in memory), and enqueue the ledger record;
2. outside the lock: await the event sink, so that concurrent requests share one
   group-committed ``fsync``;
3. if the sink fails: take the decision back under the lock and answer 503;
4. persist the change set to SQLite (itself group-committed), then answer.

Because the decision and its in-memory reservation happen atomically under the lock,
two requests can never both take the last seat or the last unit of quota; because
the answer waits for step 2, nothing is acknowledged before it is durable.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from meterbox.clock import Clock, SystemClock
from meterbox.errors import (
    BorrowRefused,
    FormatError,
    LeaseRemoved,
    NoSeatAvailable,
    PolicyDenied,
)
from meterbox.ledger import ClockSteps
from meterbox.ledger.records import (
    ClusterMember,
    ClusterQuorum,
    Heartbeat,
    LicenseInstalled,
    LicenseRevoked,
    LicenseSuspended,
    ReceiptImported,
    RecordPayload,
    SeatBorrowed,
    SeatCheckout,
    SeatDenied,
    SeatExpire,
    SeatRelease,
    SeatRemoved,
    SeatRenew,
    SeatReturned,
    SeatUnknown,
    TopupImported,
)
from meterbox.licenses import BorrowToken, DocumentSigner
from meterbox.server._activity import ActivityLog, lease_fields
from meterbox.server._batch import GroupCommitter
from meterbox.server._cluster import (
    ClusterStats,
    Coordinator,
    EtcdCoordinator,
    SeatPool,
    SingleNode,
)
from meterbox.server._cluster._idem import SharedKeys, answer
from meterbox.server._cluster._protocol import Admit, QueueEntry
from meterbox.server._cluster._quota import NEAR_LIMIT_IDLE_S, QuotaConfig
from meterbox.server._cluster._quota_core import NodeBook
from meterbox.server._cluster._usage import NowaitSink, SharedMeters
from meterbox.server._core.changes import (
    Change,
    ClockFloor,
    DenialAdd,
    IdemDrop,
    IdemPut,
    LeasePut,
    LicensePut,
    PeakMax,
    ReceiptPut,
    TopupPut,
    UsageDelta,
)
from meterbox.server._core.clock import LicenseClock
from meterbox.server._core.commits import CommitMarks
from meterbox.server._core.engine import BorrowDecision, Engine, ReceiptInfo, UsageDecision
from meterbox.server._core.meters import (
    AppliedTopup,
    IdemEntry,
    UsageResult,
    fingerprint,
    period_key,
)
from meterbox.server._core.options import Identity
from meterbox.server._core.policy import LicensePolicy
from meterbox.server._core.seats import Removal, SeatDecision, SeatLease, hour_of
from meterbox.server._core.standing import Standing
from meterbox.server._errors import LeaseNotFound, UnavailableError
from meterbox.server._sinks import EventSink, HasClockSteps, HasHead
from meterbox.server._state import StateStore
from meterbox.server._witness import MISMATCHES, Verdict, WitnessDesk
from meterbox.witness import WitnessHead

log = logging.getLogger("meterbox.server")
#: Longest lease id recorded as unknown; the server's own ids are 22 characters.
MAX_LEASE_ID = 64

#: How the housekeeping loop waits between rounds, :func:`asyncio.sleep` by default.
#: Stopping the server cancels the loop, so the wait needs no stop signal of its own.
#: Tests pass their own to run each round when they choose instead of sleeping.
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class ServiceConfig:
    """Timing knobs of a running server."""

    #: Seconds between culls of expired leases (Keygen Relay culls every 15 s).
    cull_interval: float = 5.0
    #: Seconds between ``heartbeat`` ledger records, evidence that the server was up.
    heartbeat_interval: float = 60.0
    #: Seconds between prunes of idempotency keys older than the engine's TTL.
    prune_interval: float = 600.0
    #: Seconds after which a cluster node gives back a quota block nothing drew on
    #: (setting ``cluster_quota_idle_s``, docs/adr/0032); checked every ``cull_interval``.
    quota_idle_s: float = 30.0


#: What a sink without a sealed ledger reports: no detector, no step.
_NO_STEPS = ClockSteps()


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _unavailable(exc: BaseException) -> UnavailableError:
    if isinstance(exc, UnavailableError):
        return exc
    return UnavailableError(
        "The event ledger could not record the request",
        expected="a durable ledger write",
        found=f"{type(exc).__name__}: {exc}",
        hint="Retry later; clients keep usage in their spool until it is acknowledged",
    )


#: Seconds between a queued checkout's retries (and checks that its client is still there).
QUEUE_POLL = 0.5


@dataclass
class Waiter:
    """A checkout waiting in a feature's queue."""

    client_id: str
    since: datetime
    event: asyncio.Event
    #: Its key in the cluster's queue of the feature (docs/adr/0034); None on one server.
    entry: QueueEntry | None = None


class LicenseService:
    """One running license server: engine + state store + event sink + clock."""

    def __init__(
        self,
        engine: Engine,
        store: StateStore,
        sink: EventSink,
        *,
        license_clock: LicenseClock,
        instance_id: str,
        settings: ServiceConfig = ServiceConfig(),
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.engine = engine
        self.store = store
        self.sink = sink
        self.license_clock = license_clock
        self.instance_id = instance_id
        self.settings = settings
        self._clock = clock or SystemClock()
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self._persist = GroupCommitter[list[Change], None](self._flush_state)
        #: The state's watermark (ADR 0044): the ledger's committer thread tells it of
        #: durable records (``LedgerState.on_durable``), each request of its commits.
        self.commits = CommitMarks()
        #: The seqs each request task made durable and has not committed yet.
        self._owned: weakref.WeakKeyDictionary[asyncio.Task[Any], list[int]] = (
            weakref.WeakKeyDictionary()
        )
        #: Changes whose state commit failed (a full disk), committed before the next ones.
        self._unsaved: list[Change] = []
        self._inflight: dict[str, asyncio.Future[UsageResult]] = {}
        #: Checkouts waiting for a seat, per feature, first come first served.
        self._queues: dict[str, collections.deque[Waiter]] = {}
        self._joining = asyncio.Lock()
        #: The site admin's activity log (who had which seat); None writes none.
        self.activity: ActivityLog | None = None
        #: Signs borrow tokens: the ledger's instance key (set by the instance that opens
        #: the ledger); without it the server lends no seats.
        self.borrow_signer: DocumentSigner | None = None
        #: Who else shares this server's seats: nobody by default (docs/adr/0024).
        self.cluster: Coordinator = SingleNode()
        #: Run every housekeeping round in a cluster: hand imported documents between
        #: the nodes (``ServerInstance.sync_cluster``).
        self.cluster_sync: Callable[[], Awaitable[object]] | None = None
        #: The quota blocks this node held, as its ledger's fold has them (a copy), so
        #: that a restarted node settles each at what it granted (ADR 0032).
        self.quota_book: Callable[[], NodeBook] | None = None
        #: Metered usage charged against the cluster's shared pools (None: single node).
        self.shared_meters: SharedMeters | None = None
        #: Idempotency keys shared with the other nodes (None: single node, ADR 0033).
        self.shared_keys: SharedKeys | None = None
        self._side: list[asyncio.Future[int]] = []
        #: The ledger writer's step count when :meth:`now` last looked (for the log).
        self._steps_logged = 0
        self._has_steps: bool | None = None
        self.counters: dict[str, int] = {
            "checkouts": 0,
            "renewals": 0,
            "releases": 0,
            "expiries": 0,
            "usage_records": 0,
            "usage_replays": 0,
            "sink_failures": 0,
            "witness_mismatches": 0,
        }
        #: Judges the ledger heads clients hand back (docs/spec/witness.md).
        self.witnesses = WitnessDesk(instance_id)
        self._witness_lookup = asyncio.Lock()
        self._witness_tasks: set[asyncio.Future[int]] = set()
        self._witness_queue: list[RecordPayload] = []
        self._has_head: bool | None = None
        self.started = time.monotonic()

    # ----------------------------------------------------------- building
    @classmethod
    def open(
        cls,
        store: StateStore,
        licenses: Iterable[LicensePolicy],
        sink: EventSink,
        *,
        settings: ServiceConfig = ServiceConfig(),
        rng: Callable[[int], bytes] = os.urandom,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        ledger_floor: datetime | None = None,
    ) -> LicenseService:
        """Load the state (initialising it on first use) and build a service on it.

        ``ledger_floor`` is the time of the last authenticated ledger record: license
        time never goes below it, whatever ``state.db`` says (or lacks).
        """
        clock = clock or SystemClock()
        now = clock.now()
        store.initialize(init_time=now, instance_id=rng(16).hex())
        snap = store.load()
        engine = snap.engine(licenses, rng=rng)
        floor = max(
            t for t in (snap.clock_floor, snap.init_time, now, ledger_floor) if t is not None
        )
        if snap.last_receipt is not None:
            floor = max(floor, snap.last_receipt.vendor_time)
        license_clock = LicenseClock(floor=floor)
        assert snap.instance_id is not None
        return cls(
            engine,
            store,
            sink,
            license_clock=license_clock,
            instance_id=snap.instance_id,
            settings=settings,
            clock=clock,
            sleep=sleep,
        )

    # -------------------------------------------------------------- clock
    def now(self) -> datetime:
        """License time (never earlier than any time handed out before)."""
        now = self.license_clock.observe(self._clock.now(), self._clock.mono_ms() / 1000)
        steps = self.clock_step_info()
        if steps.count != self._steps_logged:
            self._steps_logged = steps.count
            log.warning(
                "wall clock stepped by %d ms",
                steps.last_delta_ms,
                extra={"step_ms": steps.last_delta_ms},
            )
        return now

    def clock_step_info(self) -> ClockSteps:
        """The wall-clock steps the ledger sealed since start (its writer is the one detector).

        A sink without a sealed ledger (the test sink) detects none.
        """
        # Checked once, like the head: a runtime protocol check on every call costs more.
        if self._has_steps is None:
            self._has_steps = isinstance(self.sink, HasClockSteps)
        return self.sink.clock_steps() if self._has_steps else _NO_STEPS  # type: ignore[attr-defined]

    @property
    def clock_steps(self) -> int:
        """How many wall-clock steps the ledger sealed as CLOCK_STEP records since start."""
        return self.clock_step_info().count

    # --------------------------------------------------------- plumbing
    def _flush_state(self, batches: list[list[Change]]) -> list[None]:
        # The group committer runs one flush at a time, so ``_unsaved`` needs no lock.
        changes = self._unsaved + [c for batch in batches for c in batch]
        try:
            self.store.apply(changes)
        except (sqlite3.Error, OSError) as exc:
            # The records are already durable in the ledger and applied in memory, so
            # the changes are kept and committed, in order, by the next flush that
            # succeeds: the state never skips them while its sequence number moves on
            # (a restart before then replays them from the ledger). The callers get
            # 503, which tells them to retry with the same idempotency key.
            self._unsaved = changes
            raise UnavailableError(
                "The server state could not be saved",
                expected="a committed write to the state database",
                found=f"{type(exc).__name__}: {exc}",
                hint="Free disk space in the data directory; retry with the same "
                "idempotency key (the request is recorded and will not count twice)",
            ) from exc
        self._unsaved = []
        return [None] * len(batches)

    async def _durable(self, task: Awaitable[int]) -> int:
        side, self._side = self._side, []
        try:
            seq = await task
            # Pending until this request's state commit (``_save``) names it. The ledger
            # told the marks already (``LedgerState.on_durable``); a sink without a fold
            # is told here.
            self.commits.durable(seq, time.monotonic())
            owner = asyncio.current_task()
            if owner is not None:
                self._owned.setdefault(owner, []).append(seq)
            for s in side:
                await s
        except Exception as exc:
            self.counters["sink_failures"] += 1
            raise _unavailable(exc) from exc
        return seq

    async def _save(self, changes: list[Change], seq: int | None, now: datetime) -> None:
        """Commit a request's state changes, with the watermark of every record it made
        durable (ADR 0044)."""
        extra: list[Change] = [ClockFloor(now)]
        owner = asyncio.current_task()
        seqs = self._owned.pop(owner, []) if owner is not None else []
        if seq is not None:
            seqs.append(seq)
        mark = self.commits.commit(seqs, time.monotonic())
        if mark is not None:
            extra.append(mark)
        await self._persist.submit(changes + extra)

    def _write(self, record: RecordPayload) -> asyncio.Future[int]:
        """Queue one typed record on the sink; its map is exactly what the ledger seals."""
        task = asyncio.ensure_future(self.sink.record(record.record_type.kind, record.to_map()))
        if self._witness_queue:
            self._seal_witnesses()
        return task

    # -------------------------------------------------------------- seats
    async def checkout(
        self,
        feature: str,
        client_id: str,
        hostname: str | None = None,
        *,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> SeatDecision:
        """A seat of ``feature`` for ``client_id``, owned by API key ``key_id``.

        ``user`` (declared by the client) and ``group`` (of the key) are what the site's
        options file decides on; a policy refusal is answered without a ledger record.
        """
        return await self._checkout(
            feature,
            client_id,
            lambda now: self.engine.checkout(
                feature, client_id, now, hostname, key_id=key_id, user=user, group=group
            ),
            who={"user": user, "host": hostname, "group": group},
            identity=Identity(user=user, host=hostname, group=group),
        )

    async def checkout_on(
        self,
        license_id: str,
        feature: str,
        client_id: str,
        *,
        lease_seconds: int | None = None,
        overdraft_cap: int | None = None,
        hostname: str | None = None,
    ) -> SeatDecision:
        """:meth:`checkout` from one named license, with its own lease length and overdraft cap.

        Recorded, persisted and undone exactly like :meth:`checkout` (see
        :meth:`Engine.checkout_on` for the rules).
        """

        def pools(now: datetime) -> list[SeatPool]:
            lic = self.engine.licenses.get(license_id)
            policy = lic.features.get(feature) if lic is not None else None
            if policy is None:
                return []
            cap = policy.overdraft if overdraft_cap is None else max(overdraft_cap, 0)
            return [
                SeatPool(license_id, feature, False, policy.seats),
                SeatPool(license_id, feature, True, min(cap, policy.overdraft)),
            ]

        return await self._checkout(
            feature,
            client_id,
            lambda now: self.engine.checkout_on(
                license_id,
                feature,
                client_id,
                now,
                lease_seconds=lease_seconds,
                overdraft_cap=overdraft_cap,
                hostname=hostname,
            ),
            pools=pools,
        )

    async def _checkout(
        self,
        feature: str,
        client_id: str,
        decide: Callable[[datetime], SeatDecision],
        *,
        ticket: Waiter | None = None,
        record_denial: bool = True,
        who: dict[str, str | None] | None = None,
        pools: Callable[[datetime], list[SeatPool]] | None = None,
        identity: Identity | None = None,
    ) -> SeatDecision:
        """Decide a checkout under the lock, then record and persist the lease or the denial.

        While clients wait in the feature's queue, a new seat goes to the queue's head
        (``ticket``) only: anyone else is told how many wait ahead. ``record_denial=False``
        answers a refusal without a ``seat.denied`` record (a waiter's retries; its one
        denial is recorded when its wait ends). In a cluster the options file's rules for
        ``identity`` and the queue's order are decided again over every node's seats and
        waiters when the shared seat is claimed (docs/adr/0034).
        """
        async with self._lock:
            now = self.now()
            denials = self.engine.seats.denials.get(feature, 0)
            try:
                if self.cluster.shared:
                    await self._shared_queue_check(feature, client_id, ticket, now)
                else:
                    self._queue_check(feature, client_id, ticket, now)
                decision = decide(now)
                if self.cluster.shared:
                    shared = pools(now) if pools else self._pools_of(feature, now)
                    decision = await self._hold_shared(
                        decision,
                        now,
                        shared,
                        admit=self._cluster_admit(feature, identity, now),
                        waiter=ticket.entry if ticket is not None else None,
                    )
            except PolicyDenied as exc:
                self._note(
                    now,
                    "deny",
                    feature=feature,
                    client_id=client_id,
                    reason=f"policy: {exc.found}",
                    **(who or {}),
                )
                raise
            except NoSeatAvailable as exc:
                if not record_denial:
                    # A waiter's retry: not a denial (yet), in memory either.
                    self.engine.seats.denials[feature] = denials
                    raise
                denial: NoSeatAvailable | None = exc
                denied = self._write(
                    SeatDenied(feature=feature, client_id=client_id, license_id=exc.license_id)
                )
            else:
                denial = None
                hour = hour_of(now)
                peak = (feature, hour, self.engine.seats.peaks.get((feature, hour), 0))
                task = self._write_seat(decision)
        if denial is not None:
            seq = await self._durable(denied)
            self._note(
                now,
                "deny",
                feature=feature,
                client_id=client_id,
                reason=f"no seat: {denial.found}",
                **(who or {}),
            )
            await self._save([DenialAdd(feature)], seq, now)
            # The engine's explanation, answered once the denial is on record.
            raise denial
        return await self._finish_seat(decision, task, now, peak)

    # ------------------------------------------------------------ cluster
    def _pools_of(self, feature: str, now: datetime) -> list[SeatPool]:
        """The shared pools a checkout may take, in the engine's order (regular seats first)."""
        sources = self.engine.feature_sources(feature, now)
        return [
            SeatPool(license_id, feature, overdraft, p.overdraft if overdraft else p.seats)
            for overdraft in (False, True)
            for license_id, p in sources
        ]

    def _cluster_admit(
        self, feature: str, identity: Identity | None, now: datetime
    ) -> Admit | None:
        """The site's options for ``identity``, to be decided over the cluster's seats.

        None when the options file has no rules for the feature (or the checkout is not
        on behalf of anyone the file could name), so such claims compare nothing more.
        """
        if identity is None or feature not in self.engine.options.features:
            return None
        options = self.engine.options
        capacity = sum(p.seats + p.overdraft for _, p in self.engine.feature_sources(feature, now))

        def admit(live: Sequence[SeatLease]) -> None:
            options.admit(feature, identity, live, capacity)

        return admit

    async def _hold_shared(
        self,
        decision: SeatDecision,
        now: datetime,
        pools: list[SeatPool],
        *,
        admit: Admit | None = None,
        waiter: QueueEntry | None = None,
    ) -> SeatDecision:
        """Make the engine's seat decision hold across the cluster, or take it back.

        Called under the lock, before the record is written. Every renewal is recorded
        in a cluster: another node's grant relies on this node's ledger showing exactly
        when each of its leases ends (docs/adr/0024).
        """
        lease = decision.lease
        try:
            if decision.renewed:
                await self.cluster.renew_seat(lease, pools)
            else:
                lease = await self.cluster.claim_seat(lease, pools, admit=admit, waiter=waiter)
        except LeaseNotFound:
            # The lease lost its shared seat: it ends here, on record, so that the
            # client's next checkout takes a seat the cluster agrees on.
            self.engine.undo_seat(decision)
            await self._end_lost(decision.lease, now)
            raise
        except NoSeatAvailable:
            self.engine.undo_seat(decision)
            feature = decision.lease.feature
            self.engine.seats.denials[feature] = self.engine.seats.denials.get(feature, 0) + 1
            raise
        except PolicyDenied:
            # The options refuse once every node's seats are counted (docs/adr/0034).
            self.engine.undo_seat(decision)
            feature = decision.lease.feature
            denied = self.engine.seats.policy_denials
            denied[feature] = denied.get(feature, 0) + 1
            raise
        except BaseException:
            self.engine.undo_seat(decision)
            raise
        if decision.renewed and not decision.record:
            lease = replace(lease, recorded_at=now)
        if lease != decision.lease:
            self.engine.seats.leases[lease.lease_id] = lease
        return replace(decision, lease=lease, record=True)

    async def _free_shared(self, lease_ids: Iterable[str]) -> None:
        """Give shared seats back once their end is on record; etcd's lease is the fallback."""
        if not self.cluster.shared:
            return
        for lease_id in lease_ids:
            try:
                await self.cluster.release_seat(lease_id)
            except UnavailableError as exc:  # the seat's etcd lease runs out on its own
                log.warning("could not give back the shared seat of %s: %s", lease_id, exc)

    def _quorum_changed(self, quorum: bool, problem: str | None) -> None:
        event = "regained" if quorum else "lost"
        self._evidence(ClusterQuorum(event=event, detail=None if quorum else problem))

    def _evidence(self, record: RecordPayload) -> None:
        """Queue a record that no answer waits for (cluster membership and quorum)."""
        task = self._write(record)
        self._witness_tasks.add(task)
        task.add_done_callback(self._witness_written)

    def cluster_stats(self) -> ClusterStats | None:
        """The cluster metrics: the coordinator's, with shared keys and quota blocks."""
        stats = self.cluster.stats()
        if stats is None:
            return None
        keys = self.shared_keys.counters if self.shared_keys is not None else {}
        meters = self.shared_meters
        return replace(
            stats,
            idem_published=keys.get("published", 0),
            idem_remote_hits=keys.get("remote_hits", 0),
            idem_publish_failures=self.counters.get("idem_publish_failures", 0),
            quota_held=meters.held() if meters is not None else {},
            quota_idle_returns=meters.quota.idle_returns if meters is not None else 0,
        )

    async def leave_cluster(self) -> None:
        """Record that this node leaves its cluster, then leave (at a graceful stop)."""
        if self.shared_meters is not None:
            await self.shared_meters.give_back()
        if self.cluster.shared:
            self._evidence(ClusterMember(event="left", node=self.instance_id))
        await self.cluster.stop()

    async def _end_lost(self, lease: SeatLease, now: datetime) -> None:
        """End a lease whose shared seat is gone (called under the lock; rare)."""
        if self.engine.seats.leases.pop(lease.lease_id, None) is None:
            return
        seq = await self._durable(self._write(SeatExpire(lease_id=lease.lease_id)))
        self.counters["expiries"] += 1
        self._note(now, "expire", lease, reason="its shared seat ran out in etcd")
        await self._save([LeasePut(lease, ended=True)], seq, now)

    async def start_cluster(self) -> None:
        """Join the cluster; hold shared seats again for leases live since before a restart."""
        license_ids = [lic.license_id for lic in self.engine.ordered()]
        await self.cluster.start(self.instance_id, license_ids)
        if not self.cluster.shared:
            return
        self.cluster.on_quorum_change(self._quorum_changed)
        view = self.cluster.view()
        self._evidence(
            ClusterMember(
                event="joined",
                node=self.instance_id,
                cluster_id=view.extra.get("cluster_id"),
                members=tuple(sorted(m.node for m in view.members)),
            )
        )
        if not view.quorum:
            self._quorum_changed(False, view.problem)
        if isinstance(self.cluster, EtcdCoordinator):
            self.shared_keys = SharedKeys(
                self.cluster,
                node=self.instance_id,
                ttl_s=int(self.engine.idempotency_ttl.total_seconds()),
            )
        if isinstance(self.cluster, EtcdCoordinator) and isinstance(self.sink, NowaitSink):
            self.shared_meters = SharedMeters.start(
                self.cluster,
                self.sink,
                node=self.instance_id,
                license_ids=license_ids,
                members=len(view.members),
                config=QuotaConfig(
                    members=max(1, len(view.members)),
                    idle_s=self.settings.quota_idle_s,
                    near_limit_idle_s=min(NEAR_LIMIT_IDLE_S, self.settings.quota_idle_s),
                ),
                book=self.quota_book() if self.quota_book is not None else None,
            )
            await self.shared_meters.reconcile()
        async with self._lock:
            now = self.now()
            live = [x for x in self.engine.seats.leases.values() if x.live(now)]
            try:
                lost = await self.cluster.adopt_seats(live)
            except UnavailableError as exc:
                # Their slots outlive them in etcd; a renewal takes a seat again.
                log.warning("could not adopt %d shared seats at start: %s", len(live), exc)
                return
            for lease in lost:
                log.warning("lease %s lost its shared seat while down", lease.lease_id)
                await self._end_lost(lease, now)

    def _note(
        self, now: datetime, event: str, lease: SeatLease | None = None, /, **fields: Any
    ) -> None:
        """One line in the activity log (after the ledger has the record, where there is one)."""
        if self.activity is not None:
            extra = lease_fields(lease) if lease is not None else {}
            self.activity.write(now, event, **{**extra, **fields})

    # --------------------------------------------------------------- queue
    def _queue_check(
        self, feature: str, client_id: str, ticket: Waiter | None, now: datetime
    ) -> None:
        """Refuse a new seat to anyone but the queue's head while clients wait (FIFO)."""
        queue = self._queues.get(feature)
        if not queue or queue[0] is ticket:
            return
        if self.engine.seats.held_by(feature, client_id, now) is not None:
            return  # a renewal of the client's own lease never waits
        ahead = len(queue) if ticket is None else queue.index(ticket)
        sources = self.engine.feature_sources(feature, now)
        denied = NoSeatAvailable(
            f"{ahead} client(s) wait for a seat of {feature!r} ahead of this request",
            expected="a free seat and no client queued ahead",
            found=f"{ahead} queued; the first is {queue[0].client_id!r}",
            hint="Check out with wait_seconds to queue (FIFO), or retry later",
        )
        denied.license_id = sources[0][0] if sources else None
        raise denied

    async def _shared_queue_check(
        self, feature: str, client_id: str, ticket: Waiter | None, now: datetime
    ) -> None:
        """:meth:`_queue_check` over the cluster's queue: every node's waiters count.

        Asked before the engine's decision, so a request is told how many wait ahead of
        it even where the seat book would refuse first; the claim's transaction keeps
        the order (docs/adr/0034).
        """
        if self.engine.seats.held_by(feature, client_id, now) is not None:
            return  # a renewal of the client's own lease never waits
        sources = self.engine.feature_sources(feature, now)
        if not sources:
            return
        entry = ticket.entry if ticket is not None else None
        ahead = await self.cluster.places_ahead(sources[0][0], feature, entry)
        if not ahead:
            return
        denied = NoSeatAvailable(
            f"{ahead} client(s) wait for a seat of {feature!r} ahead of this request",
            expected="a free seat and no client queued ahead on any node of the cluster",
            found=f"{ahead} queued in the cluster",
            hint="Check out with wait_seconds to queue (FIFO across the cluster), or retry later",
        )
        denied.license_id = sources[0][0]
        raise denied

    def _wake(self, feature: str) -> None:
        """A seat of ``feature`` may have come free: the queue's head tries again now."""
        queue = self._queues.get(feature)
        if queue:
            queue[0].event.set()

    def queue_view(self, feature: str) -> list[dict[str, Any]]:
        """Who waits for ``feature``, in order (client ids and since when)."""
        return [
            {"position": i + 1, "client_id": w.client_id, "since": w.since.isoformat()}
            for i, w in enumerate(self._queues.get(feature, ()))
        ]

    async def checkout_waiting(
        self,
        feature: str,
        client_id: str,
        wait_seconds: float,
        *,
        hostname: str | None = None,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> SeatDecision:
        """:meth:`checkout`, queueing up to ``wait_seconds`` (FIFO per feature) for a seat.

        The head of the queue retries whenever a seat of the feature is released,
        expires or is removed, and at least every :data:`QUEUE_POLL` s; ``gone`` is
        asked as often and a waiter whose client has disconnected leaves the queue.
        Policy refusals are not waited on. One ``seat.denied`` record is written when
        the wait ends without a seat.
        """

        def decide(now: datetime) -> SeatDecision:
            return self.engine.checkout(
                feature, client_id, now, hostname, key_id=key_id, user=user, group=group
            )

        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait_seconds)
        ticket = Waiter(client_id, self.now(), asyncio.Event())
        identity = Identity(user=user, host=hostname, group=group)
        # One waiter at a time joins, so the node's own order is the cluster's order.
        async with self._joining:
            queue = self._queues.setdefault(feature, collections.deque())
            queue.append(ticket)
            if self.cluster.shared:
                try:
                    ticket.entry = await self._enqueue_shared(feature, client_id)
                except BaseException:
                    self._leave_queue(feature, ticket)
                    raise
        who = {"user": user, "host": hostname, "group": group}
        self._note(
            ticket.since,
            "queue.wait",
            feature=feature,
            client_id=client_id,
            position=len(queue),
            **who,
        )
        outcome = "timeout"
        last_try = False
        try:
            while True:
                if queue[0] is ticket:
                    try:
                        got = await self._checkout(
                            feature,
                            client_id,
                            decide,
                            ticket=ticket,
                            record_denial=False,
                            identity=identity,
                        )
                    except NoSeatAvailable:
                        pass
                    else:
                        outcome = "seat"
                        return got
                remaining = deadline - loop.time()
                if remaining <= 0:
                    last_try = True
                    break
                ticket.event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ticket.event.wait(), min(remaining, QUEUE_POLL))
                if gone is not None and await gone():
                    outcome = "gone"
                    raise asyncio.CancelledError
        finally:
            self._note(
                self.now(), "queue.leave", feature=feature, client_id=client_id, reason=outcome
            )
            self._leave_queue(feature, ticket)
            if not last_try:
                await self.cluster.dequeue(ticket.entry)
        # The wait is over: one last try, as the head, whose refusal is recorded. In a
        # cluster the ticket keeps its place in the shared queue for this try.
        self._queues.setdefault(feature, collections.deque()).appendleft(ticket)
        try:
            return await self._checkout(
                feature, client_id, decide, ticket=ticket, who=who, identity=identity
            )
        finally:
            self._leave_queue(feature, ticket)
            await self.cluster.dequeue(ticket.entry)

    async def _enqueue_shared(self, feature: str, client_id: str) -> QueueEntry | None:
        """The waiter's key in the cluster's queue, under the feature's first license."""
        pools = self._pools_of(feature, self.now())
        if not pools:
            return None
        return await self.cluster.enqueue(pools[0].license_id, feature, client_id)

    def _leave_queue(self, feature: str, ticket: Waiter) -> None:
        queue = self._queues.get(feature)
        if queue is None or ticket not in queue:
            return
        queue.remove(ticket)
        if not queue:
            del self._queues[feature]
        else:
            queue[0].event.set()

    def _write_unknown(self, lease_id: str, operation: str) -> asyncio.Future[int] | None:
        """Record a renewal or release of a lease this server does not hold.

        A lease that ran out or was released has its checkout in the ledger; one whose
        checkout the ledger lost (a restored copy of the data directory) has not, and
        this record is the vendor's only trace of it. Only lease ids of the server's
        own shape are recorded, so arbitrary strings cannot fill the ledger.
        """
        if not (0 < len(lease_id) <= MAX_LEASE_ID):
            return None
        return self._write(SeatUnknown(lease_id=lease_id, operation=operation))

    async def _record_unknown(self, task: asyncio.Future[int] | None, now: datetime) -> None:
        if task is None:
            return
        try:
            seq = await self._durable(task)
        except UnavailableError:
            # Evidence, not a grant: the answer to the client does not depend on it.
            log.warning("could not record a renewal or release of an unknown lease")
            return
        await self._save([], seq, now)

    def _write_seat(self, d: SeatDecision) -> asyncio.Future[int] | None:
        lease = d.lease
        if d.renewed:
            if not d.record:
                return None
            return self._write(SeatRenew(lease_id=lease.lease_id, expires=_epoch(lease.expires_at)))
        return self._write(
            SeatCheckout(
                lease_id=lease.lease_id,
                feature=lease.feature,
                client_id=lease.client_id,
                license_id=lease.license_id,
                expires=_epoch(lease.expires_at),
                overdraft=lease.overdraft,
                key_id=lease.key_id,
            )
        )

    async def _finish_seat(
        self,
        d: SeatDecision,
        task: asyncio.Future[int] | None,
        now: datetime,
        peak: tuple[str, datetime, int] | None,
    ) -> SeatDecision:
        seq = None
        if task is not None:
            try:
                seq = await self._durable(task)
            except UnavailableError:
                async with self._lock:
                    self.engine.undo_seat(d)
                raise
        self.counters["renewals" if d.renewed else "checkouts"] += 1
        if task is not None:
            # Renewals as the ledger coalesces them: one line per recorded renewal.
            self._note(
                now,
                "renew" if d.renewed else "checkout",
                d.lease,
                expires=d.lease.expires_at.isoformat(),
            )
        changes: list[Change] = [LeasePut(d.lease)]
        if peak is not None:
            changes.append(PeakMax(*peak))
        await self._save(changes, seq, now)
        return d

    async def heartbeat(self, lease_id: str, *, key_id: str | None = None) -> SeatDecision:
        async with self._lock:
            now = self.now()
            try:
                decision = self.engine.heartbeat(lease_id, now, key_id=key_id)
            except LeaseRemoved:
                # Known and removed on purpose: told why, and no evidence of a lost lease.
                raise
            except LeaseNotFound as exc:
                missing: LeaseNotFound | None = exc
                unknown = self._write_unknown(lease_id, "renew")
            else:
                missing = None
                if self.cluster.shared:
                    pools = self._pools_of(decision.lease.feature, now)
                    decision = await self._hold_shared(decision, now, pools)
                task = self._write_seat(decision)
        if missing is not None:
            await self._record_unknown(unknown, now)
            # Answered as before, once the evidence is on record: check out again.
            raise missing
        return await self._finish_seat(decision, task, now, None)

    # ------------------------------------------------------------ borrowing
    async def borrow(
        self,
        feature: str,
        client_id: str,
        hours: int,
        machine: str,
        *,
        hostname: str | None = None,
        key_id: str | None = None,
        user: str | None = None,
        group: str | None = None,
    ) -> tuple[SeatLease, bytes]:
        """Lend a seat for ``hours`` to the machine with digest ``machine``; return the token.

        Recorded (``seat.borrowed``, after a ``seat.release`` of the client's ordinary
        lease it replaces) and durable before the token is handed out; taken back if the
        ledger refuses. A repeated borrow from the same machine writes nothing and gets
        its token again.
        """
        signer = self.borrow_signer
        if signer is None:
            raise UnavailableError(
                "This server cannot sign borrow tokens",
                expected="a server opened on its ledger (its instance key signs tokens)",
                found="no instance key",
                hint="Borrow from the running license server",
            )
        if self.cluster.shared:
            # A borrowed seat would need a shared slot that outlives every etcd lease
            # for days; until the cluster lends slots that way, a cluster does not lend.
            raise BorrowRefused(
                "A server in a cluster does not lend seats yet",
                expected="a single-node server (no --cluster) for borrowing",
                found="this node shares its seats through etcd",
                hint="Borrow from a single-node server, or check seats out as usual",
            )
        async with self._lock:
            now = self.now()
            who = {"user": user, "host": hostname, "group": group}
            try:
                self._queue_check(feature, client_id, None, now)
                d = self.engine.borrow(
                    feature,
                    client_id,
                    now,
                    hours=hours,
                    machine=machine,
                    hostname=hostname,
                    key_id=key_id,
                    user=user,
                    group=group,
                )
            except PolicyDenied as exc:
                self._note(
                    now,
                    "deny",
                    feature=feature,
                    client_id=client_id,
                    reason=f"policy: {exc.found}",
                    **who,
                )
                raise
            except NoSeatAvailable as exc:
                denial: NoSeatAvailable | None = exc
                denied = self._write(
                    SeatDenied(feature=feature, client_id=client_id, license_id=exc.license_id)
                )
            else:
                denial = None
                tasks = self._write_borrow(d)
        if denial is not None:
            seq = await self._durable(denied)
            self._note(
                now,
                "deny",
                feature=feature,
                client_id=client_id,
                reason=f"no seat to borrow: {denial.found}",
                **who,
            )
            await self._save([DenialAdd(feature)], seq, now)
            raise denial
        await self._finish_borrow(d, tasks, now)
        return d.lease, self.borrow_token(d.lease).sign(signer)

    def _write_borrow(self, d: BorrowDecision) -> list[asyncio.Future[int]]:
        tasks = []
        if d.replaced is not None:
            tasks.append(self._write(SeatRelease(lease_id=d.replaced.lease_id)))
        if d.record:
            x = d.lease
            assert x.machine is not None
            tasks.append(
                self._write(
                    SeatBorrowed(
                        lease_id=x.lease_id,
                        feature=x.feature,
                        client_id=x.client_id,
                        license_id=x.license_id,
                        expires=_epoch(x.expires_at),
                        machine=x.machine,
                    )
                )
            )
        return tasks

    async def _finish_borrow(
        self, d: BorrowDecision, tasks: list[asyncio.Future[int]], now: datetime
    ) -> None:
        seq = None
        try:
            for task in tasks:
                seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.undo_borrow(d)
            raise
        if not d.record:
            return
        self.counters["borrows"] = self.counters.get("borrows", 0) + 1
        if d.replaced is not None:
            self._note(now, "release", d.replaced, reason="replaced by a borrow")
        self._note(now, "borrow", d.lease, expires=d.lease.expires_at.isoformat())
        changes: list[Change] = [LeasePut(d.lease)]
        if d.replaced is not None:
            changes.append(LeasePut(d.replaced, ended=True))
        hour = hour_of(now)
        peak = self.engine.seats.peaks.get((d.lease.feature, hour))
        if peak is not None:
            changes.append(PeakMax(d.lease.feature, hour, peak))
        await self._save(changes, seq, now)

    def borrow_token(self, lease: SeatLease) -> BorrowToken:
        """The token of a borrowed lease (the same lease always gives the same token)."""
        assert lease.machine is not None
        return BorrowToken(
            lease_id=lease.lease_id,
            feature=lease.feature,
            license_id=lease.license_id,
            client_id=lease.client_id,
            instance_id=self.instance_id,
            machine=lease.machine,
            issued=lease.issued_at.replace(microsecond=0),
            expires=lease.expires_at,
        )

    async def return_borrow(
        self, lease_id: str, machine: str, *, key_id: str | None = None
    ) -> bool:
        """End a borrow early (``seat.returned``); False if it is not held (idempotent)."""
        async with self._lock:
            now = self.now()
            lease = self.engine.return_borrow(lease_id, machine, now, key_id=key_id)
            if lease is None:
                return False
            task = self._write(SeatReturned(lease_id=lease_id))
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.seats.leases[lease.lease_id] = lease
            raise
        self.counters["returns"] = self.counters.get("returns", 0) + 1
        self._note(now, "return", lease)
        self._wake(lease.feature)
        await self._save([LeasePut(lease, ended=True)], seq, now)
        return True

    async def release(self, lease_id: str, *, key_id: str | None = None) -> bool:
        async with self._lock:
            now = self.now()
            lease = self.engine.release(lease_id, key_id=key_id)
            if lease is None:
                # A lease of another key is answered like an unknown one, but it is not
                # evidence of a lost checkout, so nothing is recorded for it.
                held = self.engine.is_known_lease(lease_id)
                unknown = None if held else self._write_unknown(lease_id, "release")
            else:
                task = self._write(SeatRelease(lease_id=lease_id))
        if lease is None:
            await self._record_unknown(unknown, now)
            return False
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.seats.leases[lease.lease_id] = lease
            raise
        self.counters["releases"] += 1
        self._note(now, "release", lease)
        await self._free_shared([lease_id])
        self._wake(lease.feature)
        await self._save([LeasePut(lease, ended=True)], seq, now)
        return True

    async def remove(
        self,
        removed_by: str,
        *,
        lease_id: str | None = None,
        client_id: str | None = None,
        hostname: str | None = None,
        reason: str | None = None,
    ) -> list[Removal]:
        """The administrator removes live leases: recorded (``seat.removed``), then answered.

        A removal whose record the ledger refuses is taken back (the lease is live again)
        and :class:`UnavailableError` raised, like any other decision.
        """
        async with self._lock:
            now = self.now()
            removals = self.engine.remove(
                now,
                removed_by,
                lease_id=lease_id,
                client_id=client_id,
                hostname=hostname,
                reason=reason,
            )
            tasks = [
                self._write(
                    SeatRemoved(lease_id=r.lease.lease_id, removed_by=removed_by, reason=reason)
                )
                for r in removals
            ]
        seq = None
        done: list[Removal] = []
        failed: UnavailableError | None = None
        for removal, task in zip(removals, tasks, strict=True):
            try:
                seq = await self._durable(task)
            except UnavailableError as exc:
                failed = exc
                async with self._lock:
                    self.engine.seats.undo_remove(removal)
            else:
                done.append(removal)
        self.counters["removals"] = self.counters.get("removals", 0) + len(done)
        for r in done:
            self._note(now, "remove", r.lease, by=removed_by, reason=reason)
        await self._free_shared(r.lease.lease_id for r in done)
        for feature in {r.lease.feature for r in done}:
            self._wake(feature)
        await self._save([LeasePut(r.lease, ended=True) for r in done], seq, now)
        if failed is not None:
            raise failed
        return done

    # -------------------------------------------------------------- usage
    async def usage(
        self,
        meter: str,
        amount: int,
        client_id: str,
        idempotency_key: str | None = None,
        *,
        decrement: bool = False,
        license_id: str | None = None,
    ) -> UsageResult:
        if idempotency_key is not None and self.shared_keys is not None:
            kind = "usage.decrement" if decrement else "usage"
            fp = fingerprint(kind, meter, amount, client_id)
            remote = await self._recorded_elsewhere(meter, idempotency_key, fp, license_id)
            if remote is not None:
                self.counters["usage_replays"] += 1
                return remote
        async with self._lock:
            self.cluster.require_quorum()
            now = self.now()
            decision = self.engine.record_usage(
                meter,
                amount,
                client_id,
                idempotency_key,
                now,
                decrement=decrement,
                license_id=license_id,
            )
            if decision.replay:
                waiter = self._inflight.get(idempotency_key or "")
            else:
                waiter = None
                decision, task = await self._charge(decision)
                if idempotency_key is not None:
                    self._inflight[idempotency_key] = asyncio.get_running_loop().create_future()
        if decision.replay:
            self.counters["usage_replays"] += 1
            if waiter is not None and decision.result.seq is None:
                # The first request with this key is still being written: answer with its result.
                first = await asyncio.shield(waiter)
                return replace(first, replayed=True)
            return decision.result
        return await self._finish_usage(decision, task, now, idempotency_key)

    async def _recorded_elsewhere(
        self, meter: str, key: str, fp: str, license_id: str | None
    ) -> UsageResult | None:
        """Another node's answer for a key this node does not know (ADR 0033), or None.

        Looked up outside the service lock: one etcd read, and the engine decides as
        always when no node published the key. Raises 503 without quorum.
        """
        assert self.shared_keys is not None
        if key in self.engine.meters.idempotency or key in self._inflight:
            return None  # this node's own key: the engine answers (or refuses) it
        self.cluster.require_quorum()
        lics = (
            [license_id]
            if license_id is not None
            else [lid for lid, lic in self.engine.licenses.items() if meter in lic.meters]
        )
        published = await self.shared_keys.lookup(lics, meter, key)
        if published is None or published.node == self.instance_id:
            # Published by this node before a restart that lost its state: its ledger
            # replay restores the key, so the engine answers it.
            return None
        return answer(published, fp, key)

    async def _publish_key(self, result: UsageResult) -> None:
        """Publish a durable usage event's key before answering (ADR 0033).

        A failure is logged and the answer still given: the event is on this node's
        ledger and its key known here, and a 503 would only send the client to another
        node that cannot know the key either. The vendor bills a copy recorded there once.
        """
        assert self.shared_keys is not None
        fp = fingerprint(result.kind, result.meter, result.amount, result.client_id)
        try:
            await self.shared_keys.publish(result, fp)
        except UnavailableError as exc:
            self.counters["idem_publish_failures"] = (
                self.counters.get("idem_publish_failures", 0) + 1
            )
            log.warning(
                "idempotency key %s not published to the cluster: %s",
                result.idempotency_key,
                exc,
            )

    async def _charge(self, d: UsageDecision) -> tuple[UsageDecision, asyncio.Future[int]]:
        """Write the usage record; in a cluster, charge the shared pool first (ADR 0032)."""
        r = d.result
        policy = self.engine.licenses[r.license_id].meters.get(r.meter)
        if self.shared_meters is None or policy is None or policy.limit is None:
            return d, self._write(r.record())
        try:
            result, task = await self.shared_meters.charge(r, policy)
        except BaseException:
            self.engine.undo_usage(d)
            raise
        return replace(d, result=result), task

    async def _finish_usage(
        self, decision: UsageDecision, task: asyncio.Future[int], now: datetime, key: str | None
    ) -> UsageResult:
        waiter = self._inflight.get(key) if key is not None else None
        try:
            seq = await self._durable(task)
        except UnavailableError as exc:
            async with self._lock:
                self.engine.undo_usage(decision)
                if self.shared_meters is not None:
                    self.shared_meters.undo(decision.result)
            if waiter is not None:
                self._inflight.pop(key or "", None)
                waiter.set_exception(exc)
                waiter.exception()  # mark retrieved: waiters may not exist
            raise
        async with self._lock:
            result = self.engine.complete_usage(decision, seq)
        self.counters["usage_records"] += 1
        if key is not None and self.shared_keys is not None:
            # Before the state commit: a retry after a failed one (503) then finds it.
            await self._publish_key(result)
        r = result
        changes: list[Change] = [UsageDelta(r.license_id, r.meter, r.period, decision.delta)]
        if key is not None:
            entry = IdemEntry(fingerprint(r.kind, r.meter, r.amount, r.client_id), now, r)
            changes.append(IdemPut(key, entry))
        try:
            await self._save(changes, seq, now)
        finally:
            if waiter is not None:
                self._inflight.pop(key or "", None)
                waiter.set_result(result)
        return result

    # ------------------------------------------------------------ imports
    async def import_topup(
        self, topup_id: str, license_id: str, meter: str, amount: int
    ) -> AppliedTopup:
        async with self._lock:
            now = self.now()
            topup = self.engine.apply_topup(topup_id, license_id, meter, amount, now)
            task = self._write(
                TopupImported(topup_id=topup_id, license_id=license_id, meter=meter, amount=amount)
            )
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.undo_topup(topup)
            raise
        await self._save([TopupPut(topup)], seq, now)
        policy = self.engine.licenses[license_id].meters.get(meter)
        if self.shared_meters is not None and policy is not None:
            pool = (license_id, meter, period_key(policy.period, now))
            await self.shared_meters.topup(pool, policy, topup_id, amount)
        return topup

    async def import_notice(
        self,
        *,
        license_id: str,
        notice_id: str,
        action: str,
        sequence: int,
        reason: str | None = None,
    ) -> tuple[Standing, list[Removal]]:
        """Apply a verified vendor notice: effective at once, recorded, then answered.

        A suspension or revocation ends the license's live leases (``seat.removed`` by
        ``vendor``); their holders' next heartbeat is refused naming the notice. If the
        notice's own record cannot be written, everything is taken back (503).
        """
        async with self._lock:
            now = self.now()
            previous = self.engine.standings.get(license_id)
            standing, removals = self.engine.apply_notice(
                license_id=license_id,
                notice_id=notice_id,
                action=action,
                sequence=sequence,
                reason=reason,
                now=now,
            )
            record: LicenseSuspended | LicenseRevoked = (
                LicenseRevoked(
                    license_id=license_id, notice_id=notice_id, sequence=sequence, reason=reason
                )
                if action == "revoke"
                else LicenseSuspended(
                    license_id=license_id,
                    notice_id=notice_id,
                    sequence=sequence,
                    reason=reason,
                    resumed=action == "resume",
                )
            )
            task = self._write(record)
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.undo_notice(license_id, previous, removals)
            raise
        # Only once the notice is on record: a removal must never be in the ledger
        # without the notice that caused it.
        async with self._lock:
            ended = [
                self._write(
                    SeatRemoved(lease_id=r.lease.lease_id, removed_by=r.removed_by, reason=r.reason)
                )
                for r in removals
            ]
        for t in ended:
            try:
                seq = await self._durable(t)
            except UnavailableError as exc:
                # The notice is on record: the license grants nothing whatever happens
                # to this lease, so the removal stands even unrecorded.
                log.warning("could not record a lease ended by a license notice: %s", exc)
        self._note(
            now,
            "notice",
            license_id=license_id,
            notice_id=notice_id,
            action=action,
            sequence=sequence,
            reason=reason,
        )
        for r in removals:
            self._note(now, "remove", r.lease, by=r.removed_by, reason=r.reason)
        await self._save([LeasePut(r.lease, ended=True) for r in removals], seq, now)
        return standing, removals

    async def import_receipt(self, receipt: ReceiptInfo) -> bool:
        """Take a verified receipt into account: moves the report deadline and the clock floor."""
        async with self._lock:
            previous = self.engine.last_receipt
            if not self.engine.import_receipt(receipt):
                return False
            self.license_clock.raise_floor(receipt.vendor_time)
            now = self.now()
            task = self._write(
                ReceiptImported(
                    acked_seq=receipt.seq,
                    vendor_time=receipt.vendor_time.isoformat(),
                    receipt_id=receipt.receipt_id or None,
                )
            )
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                self.engine.last_receipt = previous
            raise
        await self._save([ReceiptPut(receipt)], seq, now)
        return True

    async def install_license(self, policy: LicensePolicy, blob: bytes = b"") -> None:
        async with self._lock:
            now = self.now()
            previous = self.engine.licenses.get(policy.license_id)
            self.engine.install(policy)
            task = self._write(LicenseInstalled(license_id=policy.license_id))
        try:
            seq = await self._durable(task)
        except UnavailableError:
            async with self._lock:
                if previous is None:
                    self.engine.licenses.pop(policy.license_id, None)
                else:
                    self.engine.install(previous)
            raise
        changes: list[Change] = []
        if blob:
            changes.append(LicensePut(policy.license_id, blob, now))
        await self._save(changes, seq, now)

    async def record_event(self, record: RecordPayload) -> int:
        """Seal one record that changes no engine state (e.g. a node-locked activation).

        Answers only once the record is durable; raises :class:`UnavailableError`
        otherwise. The caller decides under its own lock and updates its own state
        only after this returns.
        """
        async with self._lock:
            now = self.now()
            task = self._write(record)
        seq = await self._durable(task)
        await self._save([], seq, now)
        return seq

    # ---------------------------------------------------------- housekeeping
    async def cull(self) -> list[SeatLease]:
        """Expire leases past their end, raise hourly peaks; write and persist it all."""
        async with self._lock:
            now = self.now()
            expired = self.engine.expire(now)
            peaks = self.engine.note_peaks(now)
            tasks = [self._write(SeatExpire(lease_id=x.lease_id)) for x in expired]
        seq = None
        for t in tasks:
            try:
                seq = await self._durable(t)
            except UnavailableError as exc:
                # An expiry is a fact of time, not a grant: it stands even unrecorded.
                log.warning("could not record a lease expiry: %s", exc)
        self.counters["expiries"] += len(expired)
        for x in expired:
            self._note(now, "expire", x)
        await self._free_shared(x.lease_id for x in expired)
        for feature in {x.feature for x in expired}:
            self._wake(feature)
        changes: list[Change] = [LeasePut(x, ended=True) for x in expired]
        changes += [PeakMax(*p) for p in peaks]
        await self._save(changes, seq, now)
        return expired

    async def write_heartbeat(self) -> int:
        async with self._lock:
            now = self.now()
            in_use = sum(len(self.engine.seats.live(f, now)) for f in self.engine.feature_names())
            task = self._write(Heartbeat(seats_in_use=in_use))
        seq = await self._durable(task)
        await self._save([], seq, now)
        return seq

    async def prune(self) -> int:
        async with self._lock:
            now = self.now()
            keys = self.engine.prune_idempotency(now)
        if keys:
            await self._save([IdemDrop(tuple(keys))], None, now)
        await asyncio.to_thread(self.store.prune_ended_leases)
        return len(keys)

    async def run_housekeeping(self) -> None:
        """Cull every ``cull_interval`` s; heartbeat and prune at their own intervals.

        The waits go through the injected ``sleep`` and the intervals are measured on the
        injected clock's monotonic time, so a test can run each round at a time of its choosing.
        """
        last_beat = last_prune = self._clock.mono_ms() / 1000
        while True:
            await self._sleep(self.settings.cull_interval)
            try:
                await self.cull()
                if self.shared_meters is not None:
                    await self.shared_meters.housekeep()
                if self.cluster_sync is not None and self.cluster.shared:
                    await self.cluster_sync()
                mono = self._clock.mono_ms() / 1000
                if mono - last_beat >= self.settings.heartbeat_interval:
                    last_beat = mono
                    await self.write_heartbeat()
                if mono - last_prune >= self.settings.prune_interval:
                    last_prune = mono
                    await self.prune()
            except Exception:  # housekeeping must outlive one bad round
                log.exception("housekeeping round failed")

    # ------------------------------------------------------------ witnesses
    async def witness(self, client_id: str | None, head: WitnessHead) -> Verdict | None:
        """Judge a head a client hands back; queue the WITNESS or WITNESS_MISMATCH record.

        The record is queued behind the request's own record, never awaited: the
        request's answer does not depend on it. A mismatch is sealed at once, logged
        and counted; the server keeps serving.
        """
        current = self.ledger_head()
        if current is None:
            return None
        seq, hex_hash = current
        try:
            own_hash = bytes.fromhex(hex_hash)
        except ValueError:
            return None  # a sink whose head is not a chain hash (test sinks)
        verdict = self.witnesses.judge(head, seq, own_hash)
        if verdict is Verdict.UNKNOWN:
            verdict = await self._look_up(head)
        record = self.witnesses.settle(client_id, head, verdict, seq, self._clock.mono_ms())
        if verdict in MISMATCHES and record is not None:
            self.counters["witness_mismatches"] += 1
            log.error(
                "client %s holds ledger head %d:%s that this ledger never had (%s; own head "
                "%d): the data directory was restored from a copy or the ledger cut back",
                client_id,
                head.seq,
                head.hash.hex()[:16],
                verdict.value,
                seq,
            )
        if record is not None:
            self._witness_queue.append(record)
            if verdict in MISMATCHES:
                self._seal_witnesses()  # at once
        return verdict

    def _seal_witnesses(self) -> None:
        """Queue the pending witness records on the sink, after the request's own record.

        Called once a request's record is queued (or answered), so a witness never
        goes into the ledger's batch ahead of the record its request is waiting for.
        """
        queue, self._witness_queue = self._witness_queue, []
        nowait = getattr(self.sink, "record_nowait", None)
        for record in queue:
            if nowait is not None:
                # Straight to the writer's queue: no task, no wake-up of the loop when
                # it is durable (the writer's close flushes it).
                try:
                    nowait(record.record_type.kind, record.to_map()).add_done_callback(
                        _log_unsealed
                    )
                except Exception as exc:  # noqa: BLE001 - evidence must not fail a request
                    log.warning("could not record a witnessed ledger head: %s", exc)
                continue
            task = asyncio.ensure_future(self.sink.record(record.record_type.kind, record.to_map()))
            self._witness_tasks.add(task)
            task.add_done_callback(self._witness_written)

    def _witness_written(self, task: asyncio.Future[int]) -> None:
        self._witness_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not record a witnessed ledger head: %s", task.exception())

    async def _look_up(self, head: WitnessHead) -> Verdict:
        has_head = getattr(self.sink, "has_head", None)
        # Reading the ledger file is rare (a head older than the index) and done one at a
        # time; a witness that arrives meanwhile is not kept waiting (nor can a client
        # keep the server scanning): it is sealed unchecked and the vendor checks it.
        if has_head is None or self._witness_lookup.locked():
            return Verdict.UNCHECKED
        async with self._witness_lookup:
            found = await asyncio.to_thread(has_head, head.seq, head.hash)
        return self.witnesses.learn(head, bool(found))

    def head_to_hand_out(self) -> WitnessHead | None:
        """The durable head every acknowledgement carries (``Meterbox-Head``)."""
        current = self.ledger_head()
        if current is None:
            return None
        try:
            head = WitnessHead(self.instance_id, current[0], bytes.fromhex(current[1]))
        except (FormatError, ValueError):
            return None  # a sink or instance id without a witness form (test sinks)
        self.witnesses.given(head.seq, head.hash)
        if self._witness_queue:
            self._seal_witnesses()
        return head

    # --------------------------------------------------------------- views
    def ledger_head(self) -> tuple[int, str] | None:
        # Checked once: a runtime protocol check costs more than the call on every request.
        if self._has_head is None:
            self._has_head = isinstance(self.sink, HasHead)
        return self.sink.head_info() if self._has_head else None  # type: ignore[attr-defined]

    def status(self) -> dict[str, Any]:
        view = status_view(
            self.engine, self.now(), self.instance_id, self.ledger_head(), self.clock_step_info()
        )
        view["witness"] = self.witnesses.status()
        return view

    async def aclose(self) -> None:
        """Wait for pending side records; the owner closes the store and the sink."""
        side, self._side = self._side, []
        if self._witness_queue:
            self._seal_witnesses()
        for s in [*side, *self._witness_tasks]:
            with contextlib.suppress(Exception):
                await s


def _log_unsealed(fut: concurrent.futures.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("could not record a witnessed ledger head: %s", fut.exception())


def status_view(
    engine: Engine,
    now: datetime,
    instance_id: str,
    seq_head: tuple[int, str] | None,
    clock_steps: ClockSteps | None = None,
) -> dict[str, Any]:
    """The ``/v1/status`` document; pure, so a stopped server's status is the same shape."""
    seats = engine.seats_view(now)
    receipt = engine.last_receipt
    steps = clock_steps or _NO_STEPS
    return {
        "instance_id": instance_id,
        "license_time": now.isoformat(),
        "ledger": {
            "seq": seq_head[0] if seq_head else None,
            "head": seq_head[1] if seq_head else None,
        },
        "last_receipt": receipt.to_json() if receipt else None,
        "report_due": engine.report_status(now),
        "seats_in_use": {f["feature"]: f["in_use"] for f in seats},
        "seats_borrowed": {f["feature"]: f["borrowed"] for f in seats},
        "quota": {
            f"{b['license_id']}/{b['meter']}": {
                "used": b["used"],
                "limit": b["limit"],
                "remaining": b["remaining"],
            }
            for b in engine.balances(now)
        },
        "clock_steps": steps.count,
        "last_clock_step": None
        if steps.last_delta_ms is None or steps.last_wall_ms is None
        else {
            "delta_ms": steps.last_delta_ms,
            "at": datetime.fromtimestamp(steps.last_wall_ms / 1000, UTC).isoformat(),
        },
    }


__all__ = ["QUEUE_POLL", "LicenseService", "ServiceConfig", "Sleep", "Waiter", "status_view"]
