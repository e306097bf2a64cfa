"""Seats, leases, membership and quorum shared by several servers through etcd.

All etcd access of the server goes through this package (docs/adr/0024). The license
service talks to a :class:`Coordinator`; :class:`SingleNode` (the default) keeps the
embedded single-server behaviour, :class:`EtcdCoordinator` shares seats through etcd.
"""

from meterbox.server._cluster._coordinator import RETRY_AFTER_S, EtcdCoordinator
from meterbox.server._cluster._etcd import Etcd
from meterbox.server._cluster._protocol import (
    ClusterUnavailableError,
    ClusterView,
    Coordinator,
    Member,
    SeatPool,
    SingleNode,
)
from meterbox.server._cluster._url import Endpoint, format_cluster_url, parse_cluster_url


def coordinator_for(cluster: str | None, *, url: str, timeout: float = 1.0) -> Coordinator:
    """:class:`SingleNode` without a cluster setting, else an etcd coordinator for it."""
    if not cluster:
        return SingleNode(url)
    return EtcdCoordinator(Etcd(parse_cluster_url(cluster), timeout=timeout), url=url)


__all__ = [
    "RETRY_AFTER_S",
    "ClusterUnavailableError",
    "ClusterView",
    "Coordinator",
    "Endpoint",
    "Etcd",
    "EtcdCoordinator",
    "Member",
    "SeatPool",
    "SingleNode",
    "coordinator_for",
    "format_cluster_url",
    "parse_cluster_url",
]
