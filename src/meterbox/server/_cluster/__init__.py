"""Seats, leases, membership and quorum shared by several servers through etcd.

All etcd access of the server goes through this package (docs/adr/0024). The license
service talks to a :class:`Coordinator`; :class:`SingleNode` (the default) keeps the
embedded single-server behaviour, :class:`EtcdCoordinator` shares seats through etcd.
"""

import logging
from pathlib import Path

from meterbox.server._cluster._coordinator import RETRY_AFTER_S, EtcdCoordinator
from meterbox.server._cluster._etcd import Etcd
from meterbox.server._cluster._protocol import (
    ClusterStats,
    ClusterUnavailableError,
    ClusterView,
    Coordinator,
    Member,
    SeatPool,
    SingleNode,
)
from meterbox.server._cluster._tls import EtcdTls, etcd_tls
from meterbox.server._cluster._url import (
    Endpoint,
    format_cluster_url,
    parse_cluster_url,
    uses_tls,
)

log = logging.getLogger("meterbox.server.cluster")


def coordinator_for(
    cluster: str | None,
    *,
    url: str,
    timeout: float = 1.0,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
) -> Coordinator:
    """:class:`SingleNode` without a cluster setting, else an etcd coordinator for it.

    With a cluster, the TLS settings are checked and every etcd member is asked once
    (:meth:`Etcd.probe`): a bad file, an untrusted certificate or a refused client
    certificate raises :class:`~meterbox.errors.ConfigError` before anything starts.
    """
    if not cluster:
        if ca or cert or key:
            etcd_tls(tls=False, ca=ca, cert=cert, key=key)  # raises: TLS without a cluster
        return SingleNode(url)
    tls = etcd_tls(tls=uses_tls(cluster), ca=ca, cert=cert, key=key)
    etcd = Etcd(parse_cluster_url(cluster), timeout=timeout, tls=tls)
    for endpoint, problem in etcd.probe().items():
        if problem is not None:
            log.warning("etcd member %s did not answer at start-up: %s", endpoint, problem)
    return EtcdCoordinator(etcd, url=url)


__all__ = [
    "RETRY_AFTER_S",
    "ClusterStats",
    "ClusterUnavailableError",
    "ClusterView",
    "Coordinator",
    "Endpoint",
    "Etcd",
    "EtcdTls",
    "EtcdCoordinator",
    "Member",
    "SeatPool",
    "SingleNode",
    "coordinator_for",
    "etcd_tls",
    "format_cluster_url",
    "parse_cluster_url",
    "uses_tls",
]
