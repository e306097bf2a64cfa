"""Metered usage of a cluster node charged against the shared pool (docs/adr/0032).

The license service keeps its single-node decision (the engine's local count, which in
a cluster is at most what the whole cluster used, so its refusals stand) and, in
cluster mode, asks :class:`~._quota.ClusterQuota` as well: units come from a block this
node holds, so most usage events need no etcd round trip. Every call that may reach
etcd runs in a worker thread, never on the event loop.

Records go straight to the ledger writer (``record_nowait``), under the quota's lock,
so QUOTA_BLOCK_TAKEN precedes every usage record drawn from the block and
QUOTA_BLOCK_RETURNED is durable before the block is freed in etcd.

At start the node settles every block the pools still list for it. The blocks it
drew on before a restart are counted as fully used (returned 0): the units they
granted are in this node's ledger, and counting them all keeps the cluster at or below
the limit whatever the node had granted. At most one block per pool and restart is
lost to enforcement; billing comes from the ledgers and is exact.

Every housekeeping round (:meth:`SharedMeters.housekeep`) gives back the blocks nothing
drew on for ``QuotaConfig.idle_s`` (sooner near the limit), so an idle node does not
keep units another node is refused for (ADR 0032, addendum).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from meterbox.ledger.records import RecordPayload, UsageDecrement
from meterbox.server._cluster._coordinator import EtcdCoordinator
from meterbox.server._cluster._quota import ClusterQuota, QuotaConfig, QuotaStore
from meterbox.server._cluster._quota_core import NodeBook, PoolKey
from meterbox.server._core.meters import UsageResult
from meterbox.server._core.policy import MeterPolicy
from meterbox.server._errors import ClusterUnavailableError

log = logging.getLogger("meterbox.server.cluster")

_T = TypeVar("_T")


@runtime_checkable
class NowaitSink(Protocol):
    def record_nowait(self, kind: str, payload: dict[str, Any]) -> Future[Any]: ...


async def _seq(fut: Future[Any]) -> int:
    return int((await asyncio.wrap_future(fut)).seq)


class SharedMeters:
    """A node's metered usage in a cluster: the async face of :class:`ClusterQuota`."""

    def __init__(self, quota: ClusterQuota, coordinator: EtcdCoordinator | None = None) -> None:
        self.quota = quota
        #: Bounds each charge's etcd calls to one budget (OP_BUDGET_S) when given.
        self._coordinator = coordinator

    def _bounded(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self._coordinator is None:
            return fn(*args, **kwargs)
        return self._coordinator.bounded(functools.partial(fn, *args, **kwargs))

    @classmethod
    def start(
        cls,
        coordinator: EtcdCoordinator,
        sink: NowaitSink,
        *,
        node: str,
        license_ids: Iterable[str],
        members: int,
        config: QuotaConfig | None = None,
        book: NodeBook | None = None,
    ) -> SharedMeters:
        """``book``: the blocks the node's ledger says it holds (the fold's copy); blocks
        the pools list for this node that the book does not know count as fully used."""

        def submit(record: RecordPayload) -> Future[Any]:
            return sink.record_nowait(record.record_type.kind, record.to_map())

        quota = ClusterQuota(
            QuotaStore(coordinator.etcd),
            node=node,
            lease=coordinator,
            submit=submit,
            license_ids=license_ids,
            config=config or QuotaConfig(members=max(1, members)),
            book=book,
            unknown_blocks_used=True,
        )
        # Settle what the pools list for this node at its first charge (or now, below):
        # the same path as after a lost lease.
        quota.reconcile_before_next_charge()
        return cls(quota, coordinator)

    async def reconcile(self) -> None:
        try:
            done = await asyncio.to_thread(self.quota.reconcile, "lost")
        except ClusterUnavailableError as exc:
            log.warning("quota blocks not settled at start (settled at first use): %s", exc)
            return
        if done:
            log.warning("settled %d quota blocks this node held before it stopped", len(done))

    async def charge(
        self, result: UsageResult, policy: MeterPolicy
    ) -> tuple[UsageResult, asyncio.Future[int]]:
        """Charge a usage result the engine allowed; its (maybe flagged) result and write."""
        pool: PoolKey = (result.license_id, result.meter, result.period)
        record = result.record()
        if isinstance(record, UsageDecrement):
            fut = await asyncio.to_thread(self._bounded, self.quota.decrement, pool, record)
            return result, asyncio.ensure_future(_seq(fut))
        charged = await asyncio.to_thread(
            self._bounded,
            self.quota.charge,
            pool,
            limit=policy.limit,
            over_limit=policy.over_limit,
            record=record,
        )
        if charged.flagged and not result.flagged:
            result = replace(result, flagged=True)
        return result, asyncio.ensure_future(_seq(charged.appended))

    def undo(self, result: UsageResult) -> None:
        """A charged request whose record was not written: its units go back to the block."""
        if result.kind == "usage" and not result.flagged:
            self.quota.undo((result.license_id, result.meter, result.period), result.amount)

    async def topup(self, pool: PoolKey, policy: MeterPolicy, topup_id: str, amount: int) -> bool:
        """Raise the shared limit by a top-up, once for the whole cluster."""
        if policy.limit is None:
            return False
        return await asyncio.to_thread(
            self._bounded,
            self.quota.topup,
            pool,
            limit=policy.limit,
            topup_id=topup_id,
            amount=amount,
        )

    async def housekeep(self) -> int:
        """Give back the blocks nothing drew on for ``idle_s`` (a housekeeping round).

        Each block is settled in its own worker-thread call inside one etcd time budget
        (OP_BUDGET_S); an etcd failure leaves the rest for the next round.
        """
        settled = 0
        try:
            while await asyncio.to_thread(self._bounded, self.quota.give_back_idle):
                settled += 1
        except ClusterUnavailableError as exc:
            log.warning("idle quota blocks left for the next round: %s", exc)
        if settled:
            log.info("gave back %d idle quota blocks", settled)
        return settled

    def held(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(license, meter) -> (units in this node's open blocks, units not granted yet)."""
        return self.quota.held()

    async def give_back(self) -> None:
        """Settle this node's open blocks (at a graceful stop): the unused units go back."""
        try:
            await asyncio.to_thread(self.quota.give_back)
        except ClusterUnavailableError as exc:
            log.warning("quota blocks left to settle at the next start: %s", exc)
