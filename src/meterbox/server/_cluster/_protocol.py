"""What the license service asks of a cluster, and the single-node answer.

The service decides every grant with its own engine, under its own lock, exactly as a
single server does. A :class:`Coordinator` is asked, inside that same lock and before
the ledger record is written, to make the decision hold across all nodes:

* :meth:`Coordinator.claim_seat` for a new lease (it may move the lease to another
  pool, e.g. to an overdraft seat when the shared regular seats are all held, or refuse
  with :class:`~meterbox.errors.NoSeatAvailable`);
* :meth:`Coordinator.renew_seat` before a renewal is granted;
* :meth:`Coordinator.release_seat` once a release, expiry or removal is on record.

Every method raises :class:`ClusterUnavailableError` when the cluster cannot vouch for
the answer (no quorum): the service then answers 503 and grants nothing.

:class:`SingleNode` is the embedded default: its seat checks are no-ops, so a server
without ``--cluster`` behaves exactly as before (and needs no etcd).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from meterbox.server._core.seats import SeatLease
from meterbox.server._errors import ClusterUnavailableError

#: Called on a quorum change: (has quorum now, why it was lost or None).
QuorumListener = Callable[[bool, str | None], None]
#: The site's options on a new seat, given the live leases of the whole cluster: raises
#: :class:`~meterbox.errors.PolicyDenied` to refuse (docs/adr/0034).
Admit = Callable[[Sequence[SeatLease]], None]

__all__ = [
    "Admit",
    "ClusterUnavailableError",
    "ClusterStats",
    "ClusterView",
    "Coordinator",
    "Member",
    "QueueEntry",
    "SeatPool",
    "SingleNode",
]


@dataclass(frozen=True)
class SeatPool:
    """Seats of one feature of one license: the regular ones or the overdraft ones."""

    license_id: str
    feature: str
    overdraft: bool
    capacity: int


@dataclass(frozen=True)
class QueueEntry:
    """A waiter's key in the cluster's queue of a feature, and when etcd created it."""

    key: str
    create_revision: int


@dataclass(frozen=True)
class Member:
    node: str
    url: str
    alive: bool = True
    #: Seconds since this node last saw the member alive; None if it never did.
    seen_ago_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.node, "url": self.url, "alive": self.alive}
        if self.seen_ago_s is not None:
            out["seen_ago_s"] = round(self.seen_ago_s, 1)
        return out


@dataclass(frozen=True)
class ClusterStats:
    """What ``/metrics`` reports of a cluster node (docs/api.md, meterbox_cluster_*)."""

    quorum: bool
    #: Members seen alive in the last membership read (this node included).
    members: int
    quorum_lost_total: int
    #: etcd operation -> (cumulative counts per bucket of ``buckets`` and +Inf, seconds).
    etcd_seconds: dict[str, tuple[list[int], float]]
    buckets: tuple[float, ...]
    #: (license, feature) -> slot keys held in etcd by all nodes, at the last count.
    seats_held: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Shared idempotency keys (ADR 0033): published, answered from another node's entry,
    #: and publications that failed (the answer was given anyway).
    idem_published: int = 0
    idem_remote_hits: int = 0
    idem_publish_failures: int = 0
    #: (license, meter) -> (units in this node's open quota blocks, units not granted yet).
    quota_held: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    #: Quota blocks this node gave back because nothing drew on them (ADR 0032).
    quota_idle_returns: int = 0


@dataclass(frozen=True)
class ClusterView:
    """What ``GET /v1/cluster`` answers (docs/api.md), and /healthz's ``cluster``."""

    mode: Literal["single", "etcd"]
    node: str
    members: tuple[Member, ...]
    quorum: bool
    #: Why quorum is lost (the last etcd error), for /healthz and the dashboard.
    problem: str | None = None
    #: Seconds since the last answer that proved quorum; ``None`` in single mode.
    since_quorum_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": self.mode,
            "node": self.node,
            "members": [m.to_json() for m in self.members],
            "quorum": self.quorum,
        }
        if self.problem is not None:
            out["problem"] = self.problem
        if self.since_quorum_s is not None:
            out["since_quorum_s"] = round(self.since_quorum_s, 3)
        out.update(self.extra)
        return out


class Coordinator(Protocol):
    """The cluster as the license service sees it (see the module docstring)."""

    @property
    def mode(self) -> Literal["single", "etcd"]: ...

    @property
    def shared(self) -> bool:
        """Whether other nodes share this node's seats (every renewal is then recorded)."""
        ...

    def view(self) -> ClusterView: ...

    def stats(self) -> ClusterStats | None:
        """The node's cluster metrics; None for a single server (no cluster metrics)."""
        ...

    def on_quorum_change(self, listener: QuorumListener) -> None:
        """Have ``listener`` called (in the event loop) whenever quorum is lost or regained."""
        ...

    def require_quorum(self) -> None:
        """Raise :class:`ClusterUnavailableError` unless new grants may be made now."""
        ...

    async def start(self, node: str, license_ids: Iterable[str]) -> None: ...

    async def stop(self) -> None: ...

    async def claim_seat(
        self,
        lease: SeatLease,
        pools: Sequence[SeatPool],
        *,
        admit: Admit | None = None,
        waiter: QueueEntry | None = None,
    ) -> SeatLease:
        """Hold one shared seat for a new ``lease``; the lease as granted (pool may change).

        ``admit`` decides the site's options over every node's leases of the feature,
        and the seat is held only if no other node's seat came or changed meanwhile.
        The seat goes to ``waiter`` (the lease's entry in the cluster's queue) or, with
        none, only while nobody waits; otherwise
        :class:`~meterbox.errors.NoSeatAvailable` says how many wait ahead.
        """
        ...

    async def enqueue(self, license_id: str, feature: str, client_id: str) -> QueueEntry | None:
        """Put a waiter at the end of the cluster's queue for ``feature`` (None: no cluster)."""
        ...

    async def dequeue(self, entry: QueueEntry | None) -> None:
        """Take a waiter out of the cluster's queue (its node's death does it too)."""
        ...

    async def places_ahead(self, license_id: str, feature: str, entry: QueueEntry | None) -> int:
        """How many wait for ``feature`` ahead of ``entry`` (of everyone: all), on all nodes."""
        ...

    async def renew_seat(self, lease: SeatLease, pools: Sequence[SeatPool]) -> None:
        """Keep the shared seat of ``lease`` held for its new length.

        A lease whose seat this node does not hold (it restarted while etcd was down)
        takes a free seat of ``pools`` again; when none is free it raises
        :class:`~meterbox.errors.LeaseNotFound` and the service ends the lease.
        """
        ...

    async def release_seat(self, lease_id: str) -> None:
        """Give the shared seat of a lease back (its end is already on record)."""
        ...

    async def adopt_seats(self, leases: Sequence[SeatLease]) -> list[SeatLease]:
        """Hold shared seats again for leases this node had before a restart.

        Returns the leases it could not hold (another node took their seat while this
        one was down); the service ends those on record.
        """
        ...


class SingleNode:
    """The embedded default: one server, its own lock is the only coordination needed."""

    def __init__(self, url: str = "") -> None:
        self.url = url
        self.node = ""

    @property
    def mode(self) -> Literal["single", "etcd"]:
        return "single"

    @property
    def shared(self) -> bool:
        return False

    def view(self) -> ClusterView:
        return ClusterView(
            mode="single", node=self.node, members=(Member(self.node, self.url),), quorum=True
        )

    def stats(self) -> ClusterStats | None:
        return None

    def on_quorum_change(self, listener: QuorumListener) -> None:
        return None  # a single server never loses quorum

    def require_quorum(self) -> None:
        return None

    async def start(self, node: str, license_ids: Iterable[str]) -> None:
        self.node = node

    async def stop(self) -> None:
        return None

    async def claim_seat(
        self,
        lease: SeatLease,
        pools: Sequence[SeatPool],
        *,
        admit: Admit | None = None,
        waiter: QueueEntry | None = None,
    ) -> SeatLease:
        return lease

    async def enqueue(self, license_id: str, feature: str, client_id: str) -> QueueEntry | None:
        return None

    async def dequeue(self, entry: QueueEntry | None) -> None:
        return None

    async def places_ahead(self, license_id: str, feature: str, entry: QueueEntry | None) -> int:
        return 0

    async def renew_seat(self, lease: SeatLease, pools: Sequence[SeatPool]) -> None:
        return None

    async def release_seat(self, lease_id: str) -> None:
        return None

    async def adopt_seats(self, leases: Sequence[SeatLease]) -> list[SeatLease]:
        return []
