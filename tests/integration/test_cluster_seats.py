"""Three meterbox nodes share 3 + 1 seats through a real three-member etcd cluster.

Every node is its own ``server init``'d data directory with its own sealed ledger.
Clients race for seats across all nodes; afterwards every node's ledger is exported,
verified with the vendor's keys, and the seats held at each instant are counted over
all three ledgers together: never more than seats + overdraft.
"""

from __future__ import annotations

import time

import httpx
import pytest

from support.cluster import (
    FEATURE,
    OVERDRAFT,
    SEATS,
    ClusterNode,
    Load,
    check_ledgers,
)

pytestmark = pytest.mark.timeout(600)


def test_racing_checkouts_across_nodes_never_exceed_seats_and_overdraft(
    cluster_nodes: list[ClusterNode],
) -> None:
    nodes = cluster_nodes
    load = Load([n.url for n in nodes], clients=12)
    load.start()
    time.sleep(8)
    load.finish()
    assert not load.errors, load.errors
    assert load.granted > 20 and load.denied > 0, (load.granted, load.denied)
    most = check_ledgers(nodes)
    # The load did fill the seats: the check above is not vacuous.
    assert most == SEATS + OVERDRAFT
    cluster = httpx.get(f"{nodes[0].url}/v1/cluster").json()
    assert cluster["mode"] == "etcd" and cluster["quorum"] is True
    assert sorted(m["url"] for m in cluster["members"]) == sorted(n.url for n in nodes)
    assert all(m["alive"] for m in cluster["members"])
    seats = httpx.get(f"{nodes[1].url}/v1/seats").json()
    assert {f["feature"] for f in seats["features"]} == {FEATURE}
