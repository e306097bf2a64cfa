"""Cluster discovery and seat failover decisions, without I/O (ADR 0026).

Discovery: any one server answers ``GET /v1/cluster`` with the members it knows
(ADR 0026); :func:`parse_cluster` checks that answer strictly and
:func:`member_urls` puts the configured URLs first, then the discovered live members,
then the members reported dead, each once.

Seat failover (:func:`after_renewal`), the one rule that keeps a client from holding
two seats: a seat whose renewal fails is checked out again, on whichever node answers,
only once its old lease is provably gone:

* a server said the lease is gone (``lease_not_found``/expired), and that server is
  the one that granted it or the cluster shares leases (mode ``etcd``): a standalone
  server that never had the lease proves nothing about it; or
* no server renewed it for a whole lease term, measured on this machine's monotonic
  clock from the last successful renewal's answer: by then its server has let it
  expire (a server counts the term from the renewal, which it answered before we got
  the answer).

A lease the site administrator removed (``lease_removed``) is never taken again
automatically. Without ``reacquire`` the seat keeps today's behaviour: a lost lease is
reported through ``on_lost`` and the application decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from meterbox.client._core import (
    Lost,
    Outcome,
    Renewed,
    RenewLater,
    Reply,
    Request,
    error_code,
)
from meterbox.client.errors import ProtocolError

#: How long a discovered member list is used before it is asked for again (seconds).
DISCOVERY_TTL: Final = 30.0
#: The fewest seconds between two discoveries, however often requests fail over.
DISCOVERY_MIN_GAP: Final = 1.0
#: The most members one answer may name; more is not a meterbox server's answer.
MAX_MEMBERS: Final = 256
_MODES: Final = ("single", "etcd")


@dataclass(frozen=True)
class Member:
    node: str
    url: str
    alive: bool


@dataclass(frozen=True)
class ClusterView:
    """What one server says about the cluster it belongs to."""

    mode: Literal["single", "etcd"]
    node: str
    members: tuple[Member, ...]
    quorum: bool

    @property
    def shares_leases(self) -> bool:
        """Whether a lease granted by one member is known to every other."""
        return self.mode == "etcd"


def cluster_request() -> Request:
    return Request("GET", "/v1/cluster")


def _bad(reply: Reply, expected: str, found: object) -> ProtocolError:
    return ProtocolError(
        f"Server at {reply.url} answered /v1/cluster with something else than a member list",
        expected=expected,
        found=repr(found)[:120],
        hint="Check that the URL is a meterbox server; the configured URLs are still used",
    )


def _url(reply: Reply, value: object) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith(("http://", "https://"))
        or len(value) > 2048
        or any(c.isspace() for c in value)
    ):
        raise _bad(reply, "member url: an http:// or https:// base URL", value)
    return value.rstrip("/")


def _member(reply: Reply, raw: object) -> Member:
    if not isinstance(raw, Mapping):
        raise _bad(reply, "each member an object {node, url, alive}", raw)
    node, alive = raw.get("node"), raw.get("alive")
    if not isinstance(node, str) or not 0 < len(node) <= 128:
        raise _bad(reply, "member node: an instance id", node)
    if not isinstance(alive, bool):
        raise _bad(reply, "member alive: true or false", alive)
    return Member(node, _url(reply, raw.get("url")), alive)


def parse_cluster(reply: Reply) -> ClusterView:
    """The cluster view of a 200 answer to ``GET /v1/cluster``; :class:`ProtocolError`
    for anything else."""
    body = reply.body
    if reply.status != 200 or not isinstance(body, Mapping):
        raise _bad(reply, "HTTP 200 with a JSON object", f"HTTP {reply.status}")
    mode, node, quorum, members = (body.get(k) for k in ("mode", "node", "quorum", "members"))
    if mode not in _MODES:
        raise _bad(reply, "mode 'single' or 'etcd'", mode)
    if not isinstance(node, str) or not node:
        raise _bad(reply, "node: this server's instance id", node)
    if not isinstance(quorum, bool):
        raise _bad(reply, "quorum: true or false", quorum)
    if not isinstance(members, list) or not 0 < len(members) <= MAX_MEMBERS:
        raise _bad(reply, f"members: a list of 1 to {MAX_MEMBERS} members", members)
    return ClusterView(
        "etcd" if mode == "etcd" else "single",
        node,
        tuple(_member(reply, m) for m in members),
        quorum,
    )


def member_urls(configured: Sequence[str], view: ClusterView | None) -> tuple[str, ...]:
    """The servers to try: configured ones first, then live members, then dead ones."""
    out = dict.fromkeys(configured)
    if view is not None:
        # A URL listed both alive and dead (two node ids behind one URL) counts as alive.
        for alive in (True, False):
            out.update((m.url, None) for m in view.members if m.alive is alive)
    return tuple(out)


# ------------------------------------------------------------------ seat failover
@dataclass(frozen=True)
class Reacquire:
    """The old lease is provably gone: check out a new seat on any node."""

    reason: str


SeatStep = Renewed | RenewLater | Lost | Reacquire


def after_renewal(
    step: Renewed | RenewLater | Lost,
    outcome: Outcome,
    *,
    owner: str | None,
    view: ClusterView | None,
    since_renewed: float,
    lease_seconds: float,
    reacquire: bool,
) -> SeatStep:
    """What a seat does after one renewal attempt (see the module docstring)."""
    if not reacquire or isinstance(step, Renewed):
        return step
    if isinstance(step, Lost):
        if not isinstance(outcome, Reply) or error_code(outcome) != "lease_not_found":
            return step  # removed by the administrator, or refused for another reason
        if outcome.url == owner or (view is not None and view.shares_leases):
            return Reacquire(f"the lease is gone from {outcome.url}")
        # A standalone server that never granted this lease cannot say it is gone.
        step = RenewLater(
            f"{outcome.url} does not hold this lease; its own server is not answering"
        )
    if since_renewed > lease_seconds:
        return Reacquire(
            f"no server renewed the lease for {since_renewed:.1f} s, longer than its "
            f"{lease_seconds:g} s term: it has expired on its server"
        )
    return step
