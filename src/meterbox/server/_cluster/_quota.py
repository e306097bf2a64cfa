"""Quota blocks through etcd: the shell around :mod:`._quota_core` (docs/adr/0025).

Keys, under the cluster contract's prefix ``/meterbox/<license_id>/``:

* ``quota/<meter>/<period>/pool``: the pool value (:meth:`Pool.to_bytes`), changed only
  by transactions that compare its ``mod_revision`` (``create_revision == 0`` when the
  pool is created), so no interleaving of nodes can reserve more than is free;
* ``quota/<meter>/<period>/live/<block id>``: the node id, attached to the node's etcd
  lease. It goes when the lease does: a block without it belongs to a node that died or
  lost etcd, and stays counted until that node settles it from its ledger;
* ``quota/topup/<top-up id>``: created if absent, in the same transaction that raises
  the pool, so a top-up imported on several nodes raises the shared limit once.

Meter names and period keys are percent-encoded in keys. Ledger writes keep the order
the core needs: QUOTA_BLOCK_TAKEN after etcd reserved the block and before any unit of
it is granted; QUOTA_BLOCK_RETURNED durable before etcd frees the block, so a crash in
between is settled again, with the same figure, from the ledger.

A transaction whose outcome is unknown (a timeout, a member that died mid-request) is
resolved by reading the pool again: block ids and top-up markers are unique, so whether
it committed is visible.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol
from urllib.parse import quote, unquote

from meterbox.errors import FormatError, QuotaExceeded
from meterbox.ledger.records import (
    QuotaBlockTaken,
    RecordPayload,
    Usage,
    UsageDecrement,
)
from meterbox.server._cluster._coordinator import unavailable
from meterbox.server._cluster._etcd import Etcd, EtcdDown, b64, prefix_end, unb64
from meterbox.server._cluster._quota_core import (
    NodeBook,
    Pool,
    PoolKey,
    Settlement,
    SettleReason,
    block_size,
    idle_blocks,
    settlement,
)
from meterbox.server._errors import ClusterUnavailableError

#: Retries of one compare-and-swap lost to other nodes before the request gives up.
_MAX_CAS_ROUNDS: Final = 200

#: Seconds without a draw after which a block of a pool near its limit is given back
#: (at most ``idle_s``): the pool had less than one block free when last seen.
NEAR_LIMIT_IDLE_S: Final = 5.0


class ClusterConflictError(ClusterUnavailableError):
    """Cluster nodes disagree about a meter (its limit), or a pool value is unreadable.

    A node cannot vouch for a grant then, so it answers as without quorum (503
    ``cluster_unavailable`` with Retry-After): the client keeps the usage in its spool
    and retries, on this node or another, and nothing it was acknowledged is lost.
    """


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """Tunables of quota blocks (the block size is measured in ADR 0025)."""

    block_size: int = 64
    #: Nodes the license declares; the fair share of a pool's last units divides by it.
    members: int = 3
    #: Seconds without a draw after which a block is given back (ADR 0032, idle give-back).
    idle_s: float = 30.0
    #: The same, for a pool that had less than one block free when this node last saw it.
    near_limit_idle_s: float = NEAR_LIMIT_IDLE_S

    def __post_init__(self) -> None:
        if self.block_size < 1 or self.members < 1:
            raise FormatError(
                "quota block configuration",
                expected="block_size >= 1 and members >= 1",
                found=f"block_size {self.block_size}, members {self.members}",
            )
        if not 0 < self.near_limit_idle_s <= self.idle_s:
            raise FormatError(
                "quota block idle times",
                expected="0 < near_limit_idle_s <= idle_s (seconds)",
                found=f"idle_s {self.idle_s}, near_limit_idle_s {self.near_limit_idle_s}",
                hint="Set cluster_quota_idle_s to a positive number of seconds",
            )


class NodeLease(Protocol):
    """This node's etcd lease, kept alive by whoever owns it."""

    @property
    def lease_id(self) -> int: ...

    #: Goes up each time the lease was lost and replaced by a new one.
    @property
    def generation(self) -> int: ...

    def fresh(self) -> bool:
        """True while the lease is known to be alive in etcd (its TTL not yet run out)."""
        ...


# ------------------------------------------------------------------- etcd access
class QuotaStore:
    """The few etcd requests quota blocks need, over the cluster's one etcd client.

    Every failure of :class:`Etcd` (no member answered, or etcd answered with an error)
    is :class:`ClusterUnavailableError`: the node cannot vouch for a grant.
    """

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.etcd.call(path, body)
        except EtcdDown as exc:
            raise unavailable(str(exc)) from None

    def get(self, key: str) -> tuple[bytes, int] | None:
        """Value and ``mod_revision`` of ``key`` (linearizable read), or None."""
        kvs = self.post("kv/range", {"key": b64(key)}).get("kvs") or []
        if not kvs:
            return None
        return unb64(kvs[0].get("value", "")), int(kvs[0]["mod_revision"])

    def get_prefix(self, prefix: str) -> list[tuple[str, bytes, int]]:
        out = self.post("kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        return [
            (unb64(kv["key"]).decode(), unb64(kv.get("value", "")), int(kv["mod_revision"]))
            for kv in out.get("kvs") or []
        ]

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]]) -> int | None:
        """Run ``success`` if every compare holds; the new revision, or None if one failed.

        :class:`Etcd` sends a request again to the next member when one fails, so a
        transaction may have committed although this answer says its compare failed
        (the second send compared against the first's change): callers check.
        """
        out = self.post("kv/txn", {"compare": compare, "success": success, "failure": []})
        if not out.get("succeeded"):
            return None
        return int(out["header"]["revision"])

    def grant(self, ttl_s: int) -> int:
        return int(self.post("lease/grant", {"TTL": ttl_s, "ID": 0})["ID"])

    def keepalive(self, lease_id: int) -> int:
        """The lease's new TTL; 0 or less when etcd no longer knows the lease."""
        return int(self.post("lease/keepalive", {"ID": lease_id}).get("result", {}).get("TTL", -1))


def put(key: str, value: bytes, lease: int | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease is not None:
        req["lease"] = lease
    return {"request_put": req}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def same_revision(key: str, mod_revision: int | None) -> dict[str, Any]:
    """Compare: ``key`` unchanged since read (absent when ``mod_revision`` is None)."""
    if mod_revision is None:
        return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


class EtcdNodeLease:
    """A node lease kept alive by a thread; replaced by a new one if etcd lost it."""

    def __init__(
        self, etcd: QuotaStore, ttl_s: int = 5, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._etcd = etcd
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._id = etcd.grant(ttl_s)
        self._generation = 0
        self._alive_until = clock() + ttl_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etcd-lease", daemon=True)

    @property
    def lease_id(self) -> int:
        return self._id

    @property
    def generation(self) -> int:
        return self._generation

    def fresh(self) -> bool:
        # A margin of one keepalive interval: etcd may count the TTL from slightly
        # before this node saw the answer.
        with self._lock:
            return self._clock() < self._alive_until - self._ttl / 3

    def start(self) -> EtcdNodeLease:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def refresh(self) -> None:
        """One keepalive; a new lease (next generation) if etcd forgot the old one."""
        sent = self._clock()
        try:
            ttl = self._etcd.keepalive(self._id)
            if ttl <= 0:
                new_id = self._etcd.grant(self._ttl)
                with self._lock:
                    self._id = new_id
                    self._generation += 1
                    self._alive_until = sent + self._ttl
                return
        except ClusterUnavailableError:
            return
        with self._lock:
            self._alive_until = sent + ttl

    def _run(self) -> None:
        while not self._stop.wait(self._ttl / 3):
            self.refresh()


# ------------------------------------------------------------------- the shell
def _part(text: str) -> str:
    return quote(text, safe="")


@dataclass(frozen=True, slots=True)
class Charged:
    """A usage request granted: whether it went over the limit, and its ledger write."""

    flagged: bool
    block_ids: tuple[str, ...]
    appended: Future[Any]


Submit = Callable[[RecordPayload], "Future[Any]"]


class ClusterQuota:
    """One node's quota blocks for the meters of ``license_ids``.

    ``submit`` queues a record in this node's ledger (``LedgerWriter.submit`` with the
    payload's type) and returns the future that resolves once it is durable. It is
    called under this object's lock, so records reach the ledger in decision order,
    which is what lets :meth:`NodeBook.fold` rebuild the same draws after a crash.
    """

    def __init__(  # noqa: PLR0913 - keyword-only wiring
        self,
        etcd: QuotaStore,
        *,
        node: str,
        lease: NodeLease,
        submit: Submit,
        license_ids: Iterable[str],
        config: QuotaConfig | None = None,
        book: NodeBook | None = None,
        new_block_id: Callable[[], str] | None = None,
        unknown_blocks_used: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._etcd = etcd
        self.node = node
        self._lease = lease
        self._submit = submit
        self._license_ids = tuple(license_ids)
        self.config = config or QuotaConfig()
        self.book = book or NodeBook()
        self._new_id = new_block_id or (lambda: f"{node}.{uuid.uuid4().hex[:16]}")
        self._lock = threading.Lock()
        self._generation = lease.generation
        #: Settle a block the pool lists for this node but the book does not know as
        #: fully used (a node restarted without folding its ledger into the book):
        #: conservative, so the cluster stays at or below the limit.
        self._unknown_used = unknown_blocks_used
        #: etcd requests made, for the block-size measurement (bench/quota_block_bench.py).
        self.round_trips = 0
        self._clock = clock
        #: Block id -> when it was last drawn on (or taken), on ``clock``: the idle decision.
        self._last_drawn: dict[str, float] = {}
        #: Pools that had less than one preferred block free when this node last saw them.
        self._near_limit: set[PoolKey] = set()
        #: Blocks settled in the ledger whose release in etcd failed: freed at the next round.
        self._unfreed: dict[str, tuple[PoolKey, Settlement]] = {}
        #: Blocks given back because they were idle, since start.
        self.idle_returns = 0

    # ----------------------------------------------------------------- keys
    @staticmethod
    def pool_key(pool: PoolKey) -> str:
        lic, meter, period = pool
        return f"/meterbox/{_part(lic)}/quota/{_part(meter)}/{_part(period)}/pool"

    @staticmethod
    def live_key(pool: PoolKey, block_id: str) -> str:
        lic, meter, period = pool
        return f"/meterbox/{_part(lic)}/quota/{_part(meter)}/{_part(period)}/live/{_part(block_id)}"

    @staticmethod
    def topup_key(license_id: str, topup_id: str) -> str:
        return f"/meterbox/{_part(license_id)}/quota/topup/{_part(topup_id)}"

    # ------------------------------------------------------------- reading
    def read_pool(self, pool: PoolKey) -> tuple[Pool, int] | None:
        self.round_trips += 1
        got = self._etcd.get(self.pool_key(pool))
        if got is None:
            return None
        raw, rev = got
        try:
            return Pool.from_bytes(raw), rev
        except FormatError as exc:
            raise ClusterConflictError(
                f"The shared quota of {pool[1]!r} ({pool[0]}, {pool[2]}) is unreadable",
                expected="a pool value this meterbox version writes",
                found=exc.render(),
                hint="Run the same meterbox version on every node",
            ) from None

    def live_blocks(self, pool: PoolKey) -> set[str]:
        """Block ids of the pool whose node's lease is alive."""
        lic, meter, period = pool
        prefix = f"/meterbox/{_part(lic)}/quota/{_part(meter)}/{_part(period)}/live/"
        self.round_trips += 1
        return {unquote(k[len(prefix) :]) for k, _, _ in self._etcd.get_prefix(prefix)}

    def _pool_or_new(self, pool: PoolKey, limit: int) -> tuple[Pool, int | None]:
        found = self.read_pool(pool)
        if found is None:
            return Pool(limit=limit), None
        value, rev = found
        if value.limit != limit:
            raise ClusterConflictError(
                f"Cluster nodes disagree about the limit of meter {pool[1]!r}",
                expected=f"the limit this node's license states ({limit})",
                found=f"{value.limit} in the shared pool of license {pool[0]}, {pool[2]}",
                hint="Install the same license file on every node of the cluster",
            )
        return value, rev

    # ---------------------------------------------------------------- usage
    def charge(
        self, pool: PoolKey, *, limit: int | None, over_limit: str, record: Usage
    ) -> Charged:
        """Grant ``record.amount`` units of a pool and queue the usage record.

        Drawn from this node's open blocks when they cover it (no etcd request); else a
        block is taken first. When the pool cannot cover it either, a ``refuse`` meter
        raises :class:`QuotaExceeded` and an ``allow`` meter grants it flagged.
        """
        with self._lock:
            if limit is None:
                return Charged(False, (), self._submit(replace(record, flagged=False)))
            self._check_lease()
            amount = record.amount
            if self.book.left(pool) < amount:
                for stale in self.book.other_periods(pool):
                    self._settle_open(stale.block_id, "unused")
                if not self._take(pool, limit, amount - self.book.left(pool)):
                    if over_limit != "allow":
                        raise self._exceeded(pool, amount)
                    return Charged(True, (), self._submit(replace(record, flagged=True)))
            before = {b.block_id: b.used for b in self.book.blocks_of(pool)}
            drawn = self.book.draw(pool, amount)
            assert drawn, "a block covering the request was just taken"
            ids = tuple(
                b.block_id for b in self.book.blocks_of(pool) if b.used != before[b.block_id]
            )
            now = self._clock()
            for block_id in ids:
                self._last_drawn[block_id] = now
            return Charged(False, ids, self._submit(replace(record, flagged=False)))

    def decrement(self, pool: PoolKey, record: UsageDecrement) -> Future[Any]:
        """Give units back to this node's open blocks and queue the decrement record."""
        with self._lock:
            self.book.credit(pool, record.amount)
            return self._submit(record)

    def undo(self, pool: PoolKey, amount: int) -> None:
        """A granted request whose usage record could not be written: its units go back."""
        with self._lock:
            self.book.credit(pool, amount)

    def _exceeded(self, pool: PoolKey, amount: int) -> QuotaExceeded:
        found = self.read_pool(pool)
        state = (
            "no pool yet"
            if found is None
            else (
                f"limit {found[0].limit} + top-ups {found[0].topups}, "
                f"consumed {found[0].consumed}, "
                f"held in blocks {found[0].reserved} (this node {self.book.left(pool)} left)"
            )
        )
        return QuotaExceeded(
            f"The prepaid quota of meter {pool[1]!r} is used up across the cluster",
            expected=f"at least {amount} units free in license {pool[0]}, period {pool[2]}",
            found=state,
            hint="Ask the vendor for a top-up file and import it on any cluster node",
        )

    def reconcile_before_next_charge(self) -> None:
        """Settle this node's blocks (as after a lost lease) before the next charge."""
        with self._lock:
            self._generation = -1

    def _check_lease(self) -> None:
        if not self._lease.fresh():
            raise ClusterUnavailableError(
                "This node's etcd lease is not known to be alive",
                expected="a lease kept alive within its TTL",
                found=f"lease {self._lease.lease_id:x} not refreshed in time",
                hint="Retry on another meterbox node",
            )
        if self._lease.generation != self._generation:
            # etcd forgot the old lease: its blocks' live keys are gone. Settle them from
            # what this node granted before drawing on anything again.
            self._reconcile_locked("expired")
            self._generation = self._lease.generation

    def _take(self, pool: PoolKey, limit: int, wanted: int) -> bool:
        """Reserve a block covering ``wanted`` more units; False if the pool cannot."""
        block_id = self._new_id()
        key = self.pool_key(pool)
        for _ in range(_MAX_CAS_ROUNDS):
            value, rev = self._pool_or_new(pool, limit)
            mine = value.block(block_id)
            if mine is not None:
                # An earlier attempt committed though its answer was lost (the request was
                # sent again to another member, whose compare then failed on our own change).
                self._opened(pool, block_id, mine.size, None)
                return True
            size = block_size(
                wanted=wanted,
                free=value.free,
                preferred=self.config.block_size,
                members=self.config.members,
            )
            if size == 0:
                self._near_limit.add(pool)
                return False
            if value.free - size < self.config.block_size:
                self._near_limit.add(pool)
            else:
                self._near_limit.discard(pool)
            taken = value.take(block_id, self.node, size)
            ops = [
                put(key, taken.to_bytes()),
                put(self.live_key(pool, block_id), self.node.encode(), self._lease.lease_id),
            ]
            revision = self._cas(pool, [same_revision(key, rev)], ops, block_id, present=True)
            if revision is not None:
                self._opened(pool, block_id, size, revision or None)
                return True
        raise ClusterUnavailableError(
            "The shared quota is too busy",
            expected=f"a block taken within {_MAX_CAS_ROUNDS} attempts",
            found="every attempt lost to another node's change",
            hint="Retry; raise the block size if this repeats under normal load",
        )

    def _opened(self, pool: PoolKey, block_id: str, size: int, revision: int | None) -> None:
        self.book.opened(block_id, pool, size)
        self._last_drawn[block_id] = self._clock()
        lic, meter, period = pool
        self._submit(
            QuotaBlockTaken(
                block_id=block_id,
                license_id=lic,
                meter=meter,
                period=period,
                size=size,
                revision=revision,
            )
        )

    def _cas(
        self,
        pool: PoolKey,
        compare: list[dict[str, Any]],
        ops: list[dict[str, Any]],
        block_id: str,
        *,
        present: bool,
    ) -> int | None:
        """Run a transaction; if its outcome is unknown, read whether it committed.

        Returns the revision (0 when only the re-read showed it committed) or None when
        the compare failed.
        """
        self.round_trips += 1
        try:
            return self._etcd.txn(compare, ops)
        except ClusterUnavailableError:
            # If etcd cannot be read either, the error stands: the outcome stays unknown
            # and the next start settles from the ledger.
            found = self.read_pool(pool)
            committed = found is not None and (found[0].block(block_id) is not None) == present
            if committed:
                return 0
            raise

    # ---------------------------------------------------------------- settling
    def _settle(self, pool: PoolKey, s: Settlement) -> None:
        """Write the RETURNED record (durable first), then free the block in etcd."""
        if s.record is not None:
            self._submit(s.record).result()
        self.book.closed(s.block.block_id, s.used)
        self._last_drawn.pop(s.block.block_id, None)
        try:
            self._free(pool, s)
        except ClusterUnavailableError:
            # Durable as settled: etcd frees it at the next housekeeping round (or start).
            self._unfreed[s.block.block_id] = (pool, s)
            raise
        self._unfreed.pop(s.block.block_id, None)

    def _free(self, pool: PoolKey, s: Settlement) -> None:
        """Remove a settled block from the pool: its used units consumed, the rest free."""
        key = self.pool_key(pool)
        for _ in range(_MAX_CAS_ROUNDS):
            found = self.read_pool(pool)
            if found is None or found[0].block(s.block.block_id) is None:
                return
            value, rev = found
            ops = [
                put(key, value.settle(s.block.block_id, s.used).to_bytes()),
                delete(self.live_key(pool, s.block.block_id)),
            ]
            if self._cas(pool, [same_revision(key, rev)], ops, s.block.block_id, present=False):
                return
        raise ClusterUnavailableError(
            "The shared quota is too busy to give a block back",
            expected=f"the block settled within {_MAX_CAS_ROUNDS} attempts",
            found="every attempt lost to another node's change",
            hint="It is settled from this node's ledger at the next start",
        )

    def _settle_open(self, block_id: str, reason: SettleReason) -> None:
        held = self.book.open[block_id]
        found = self.read_pool(held.pool)
        block = None if found is None else found[0].block(block_id)
        if block is None:
            # etcd no longer lists it (settled by an earlier run): only the book closes it.
            self.book.closed(block_id, held.used)
            self._last_drawn.pop(block_id, None)
            return
        self._settle(held.pool, settlement(held.pool, block, self.book, reason))

    def give_back(self, pool: PoolKey | None = None) -> int:
        """Settle this node's open blocks (of one pool, or all): what it did not use goes back."""
        with self._lock:
            ids = [b.block_id for b in self.book.open.values() if pool is None or b.pool == pool]
            for block_id in ids:
                self._settle_open(block_id, "unused")
            return len(ids)

    def give_back_idle(self) -> bool:
        """Settle one idle block (or free one settled earlier); False when none is left.

        One block per call, so that each call fits in one etcd time budget
        (``EtcdCoordinator.bounded``); the caller repeats while this returns True.
        """
        with self._lock:
            if self._unfreed:
                block_id, (pool, s) = next(iter(self._unfreed.items()))
                self._free(pool, s)
                self._unfreed.pop(block_id, None)
                return True
            if not self.book.open or not self._lease.fresh():
                # Without a live lease nothing is settled here: the next charge (or the
                # next round) reconciles, and a warning every round would add nothing.
                return False
            self._check_lease()
            ids = idle_blocks(
                self.book,
                self._last_drawn,
                self._clock(),
                idle_s=self.config.idle_s,
                near_limit_idle_s=self.config.near_limit_idle_s,
                near_limit=self._near_limit,
            )
            if not ids:
                return False
            self._settle_open(ids[0], "unused")
            self.idle_returns += 1
            return True

    def held(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(license, meter) -> (units held in this node's open blocks, units not granted yet).

        Read without the lock (a scrape must not wait on an etcd call): a copy of the book
        as it is at one instant of the interpreter.
        """
        for _ in range(5):
            try:
                blocks = [(b.pool, b.size, b.left) for b in list(self.book.open.values())]
                break
            except RuntimeError:  # the book changed size while it was copied
                continue
        else:
            return {}
        out: dict[tuple[str, str], tuple[int, int]] = {}
        for (lic, meter, _), size, left in blocks:
            size0, left0 = out.get((lic, meter), (0, 0))
            out[lic, meter] = (size0 + size, left0 + left)
        return out

    def reconcile(self, reason: SettleReason = "lost") -> list[Settlement]:
        """Settle every block the pools list for this node, from this node's ledger.

        Run at start with the book folded from the ledger (``lost`` or ``expired`` per
        block: ``expired`` when its live key is already gone), and after the lease was
        lost. What the node granted from each block counts as consumed, the rest returns.
        """
        with self._lock:
            done = self._reconcile_locked(reason)
            self._generation = self._lease.generation
            return done

    def _reconcile_locked(self, reason: SettleReason) -> list[Settlement]:
        done: list[Settlement] = []
        for lic in self._license_ids:
            prefix = f"/meterbox/{_part(lic)}/quota/"
            self.round_trips += 1
            for key, raw, _ in self._etcd.get_prefix(prefix):
                if not key.endswith("/pool"):
                    continue
                parts = key[len(prefix) :].split("/")
                pool: PoolKey = (lic, unquote(parts[0]), unquote(parts[1]))
                value = Pool.from_bytes(raw)
                mine = value.held_by(self.node)
                if not mine:
                    continue
                live = self.live_blocks(pool)
                for block in mine:
                    why: SettleReason = reason if block.block_id in live else "expired"
                    known = block.block_id in self.book.open or block.block_id in self.book.settled
                    if self._unknown_used and not known:
                        self.book.opened(block.block_id, pool, block.size)
                        self.book.open[block.block_id].used = block.size
                    s = settlement(pool, block, self.book, why)
                    self._settle(pool, s)
                    done.append(s)
        # Blocks the book still holds that no pool lists were settled in etcd already.
        for block_id, held in list(self.book.open.items()):
            self.book.closed(block_id, held.used)
        self._last_drawn.clear()
        self._unfreed.clear()
        return done

    # ---------------------------------------------------------------- top-ups
    def topup(self, pool: PoolKey, *, limit: int, topup_id: str, amount: int) -> bool:
        """Raise the pool by a top-up once for the whole cluster; False if already applied."""
        with self._lock:
            marker = self.topup_key(pool[0], topup_id)
            stamp = json.dumps(
                {"node": self.node, "pool": list(pool), "amount": amount, "n": uuid.uuid4().hex}
            ).encode()
            key = self.pool_key(pool)
            for _ in range(_MAX_CAS_ROUNDS):
                self.round_trips += 1
                seen = self._etcd.get(marker)
                if seen is not None:
                    # Ours when an earlier attempt committed but its answer was lost.
                    return seen[0] == stamp
                value, rev = self._pool_or_new(pool, limit)
                ops = [put(key, value.topup(amount).to_bytes()), put(marker, stamp)]
                self.round_trips += 1
                try:
                    ok = self._etcd.txn([same_revision(key, rev), same_revision(marker, None)], ops)
                except ClusterUnavailableError:
                    got = self._etcd.get(marker)
                    if got is not None and got[0] == stamp:
                        return True
                    raise
                if ok is not None:
                    return True
            raise ClusterUnavailableError(
                "The shared quota is too busy to apply a top-up",
                expected=f"the top-up applied within {_MAX_CAS_ROUNDS} attempts",
                found="every attempt lost to another node's change",
                hint="Import the top-up again; it is applied at most once",
            )
