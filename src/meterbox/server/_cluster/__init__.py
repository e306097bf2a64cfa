"""Seats, leases, membership and quorum shared by several servers through etcd.

All etcd access of the server goes through this package (docs/adr/0024). The license
service talks to a :class:`Coordinator`; :class:`SingleNode` (the default) keeps the
embedded single-server behaviour, :class:`EtcdCoordinator` shares seats through etcd.
"""

from meterbox.server._cluster._protocol import (
    ClusterUnavailableError,
    ClusterView,
    Coordinator,
    Member,
    SeatPool,
    SingleNode,
)

__all__ = [
    "ClusterUnavailableError",
    "ClusterView",
    "Coordinator",
    "Member",
    "SeatPool",
    "SingleNode",
]
