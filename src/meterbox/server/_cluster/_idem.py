"""Idempotency keys of metered usage, shared by the nodes of a cluster (docs/adr/0033).

A client that lost the answer to a usage request resends it with the same key, maybe
to another node. Each node remembers its own keys (the engine); in a cluster a node
also publishes the keys of every usage batch once the batch is durable on its ledger
and before it answers, and a node asked for a key it does not know looks it up first:
when another node recorded it, that node's answer is given again and nothing is
recorded. Keys (each segment percent-encoded)::

    /meterbox/<lic>/idem/<meter>/<key>    {"n": node, "fp": fingerprint, "r": result}

They hang on an etcd lease of at least the engine's idempotency TTL (7 days), not on
the node's session lease, so they outlive the node that wrote them: a lease of
``ttl + ROTATE_S`` granted afresh every :data:`ROTATE_S`, so every key lives between
the TTL and the TTL plus one rotation.

What this cannot close (the vendor's ingest does, ADR 0033): a node that dies after
its ledger commit and before its publication leaves the key unknown to the others,
and a resend to another node is recorded there too. Both ledgers then hold the
event, and the vendor bills it once.

Every etcd call goes through :class:`~._etcd.Etcd` and runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from meterbox.server._batch import GroupCommitter
from meterbox.server._cluster._coordinator import ROOT, EtcdCoordinator, _seg, unavailable
from meterbox.server._cluster._etcd import EtcdDown
from meterbox.server._core.meters import UsageResult
from meterbox.server._errors import IdempotencyConflictError

log = logging.getLogger("meterbox.server.cluster")

#: Seconds between grants of the lease the published keys hang on.
ROTATE_S: Final = 3600


def idem_path(license_id: str, meter: str, key: str) -> str:
    return f"{ROOT}{_seg(license_id)}/idem/{_seg(meter)}/{_seg(key)}"


@dataclass(frozen=True)
class Published:
    """What a node published for one key: who recorded it, and its answer."""

    node: str
    fingerprint: str
    result: UsageResult

    def to_bytes(self) -> bytes:
        doc = {"n": self.node, "fp": self.fingerprint, "r": self.result.to_json()}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Published | None:
        """The published entry, or None for a value this version does not read."""
        try:
            doc = json.loads(data)
            return cls(str(doc["n"]), str(doc["fp"]), UsageResult.from_json(doc["r"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def answer(published: Published, fingerprint: str, key: str) -> UsageResult:
    """The answer a resend gets from a node that did not record it (a replay).

    The same body a duplicate on the recording node gets, or the same conflict when the
    key came with another meter, amount or client.
    """
    if published.fingerprint != fingerprint:
        r = published.result
        raise IdempotencyConflictError(
            f"Idempotency key {key!r} was already used for a different request",
            expected="the same meter, amount and client_id as the first request with this key",
            found=f"a request that differs ({r.meter} x{r.amount} by {r.client_id!r} first, "
            f"on node {published.node[:16]})",
            hint="Use a fresh idempotency key for each distinct usage event",
        )
    return replace(published.result, replayed=True)


class SharedKeys:
    """A node's published idempotency keys; see the module docstring."""

    def __init__(
        self,
        coordinator: EtcdCoordinator,
        *,
        node: str,
        ttl_s: int,
        rotate_s: int = ROTATE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self.etcd = coordinator.etcd
        self.node = node
        self.ttl_s = ttl_s
        self.rotate_s = rotate_s
        self._clock = clock
        self._lease = 0
        self._granted = 0.0
        self._lease_lock = threading.Lock()
        self._committer = GroupCommitter[tuple[str, bytes], None](self._flush)
        self.counters = {"published": 0, "batches": 0, "remote_hits": 0}

    def _current_lease(self) -> int:
        with self._lease_lock:
            if not self._lease or self._clock() - self._granted >= self.rotate_s:
                self._lease = self.etcd.grant(self.ttl_s + self.rotate_s)
                self._granted = self._clock()
            return self._lease

    def _flush(self, items: list[tuple[str, bytes]]) -> list[None]:
        # A node that knows it has no quorum does not wait on etcd's timeouts again.
        self.coordinator.require_quorum()
        try:
            # One time budget for the lease and the transaction (OP_BUDGET_S).
            self.coordinator.bounded(lambda: self.etcd.put_all(items, self._current_lease()))
        except EtcdDown as exc:
            # etcd may have forgotten the lease (restored from a snapshot, or the node
            # was cut off longer than it lives): the next batch takes a fresh one.
            with self._lease_lock:
                self._lease = 0
            self.coordinator._lost(str(exc))
            raise unavailable(str(exc)) from exc
        self.counters["published"] += len(items)
        self.counters["batches"] += 1
        return [None] * len(items)

    async def publish(self, result: UsageResult, fingerprint: str) -> None:
        """Publish the key of a usage result that is durable on this node's ledger.

        Requests that arrive while a publication is in flight are published together
        by the next transaction (group commit).
        """
        key = result.idempotency_key
        if key is None:
            return
        entry = Published(self.node, fingerprint, result)
        await self._committer.submit(
            (idem_path(result.license_id, result.meter, key), entry.to_bytes())
        )

    async def lookup(self, license_ids: Sequence[str], meter: str, key: str) -> Published | None:
        """What another node published for ``key`` under any of ``license_ids``, or None."""
        paths = [idem_path(lic, meter, key) for lic in license_ids]
        if not paths:
            return None
        try:
            kv = await asyncio.to_thread(self.coordinator.bounded, self.etcd.get_first, paths)
        except EtcdDown as exc:
            self.coordinator._lost(str(exc))
            raise unavailable(str(exc)) from exc
        if kv is None:
            return None
        found = Published.from_bytes(kv.value)
        if found is None:
            log.warning("unreadable idempotency entry %s left alone", kv.key)
        elif found.node != self.node:
            self.counters["remote_hits"] += 1
        return found
