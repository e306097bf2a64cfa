"""Three meterbox nodes share 3 + 1 seats through a real three-member etcd cluster.

Every node is its own ``server init``'d data directory with its own sealed ledger.
Clients race for seats across all nodes; afterwards every node's ledger is exported,
verified with the vendor's keys, and the seats held at each instant are counted over
all three ledgers together: never more than seats + overdraft.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.cluster import (
    FEATURE,
    OVERDRAFT,
    SEATS,
    ClusterNode,
    Load,
    make_cluster_site,
    most_held_at_once,
    seat_intervals,
)
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def nodes(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[list[ClusterNode]]:
    site = make_cluster_site(tmp_path)
    # Node 2 talks to etcd member 2 only, so a drill can cut it off from etcd alone.
    wiring = [(0, 1, 2), (1, 2, 0), (2,)]
    started = [
        ClusterNode(d, tmp_path, etcd_cluster, w) for d, w in zip(site.nodes, wiring, strict=True)
    ]
    try:
        for n in started:
            n.start()
        yield started
    finally:
        for n in started:
            n.stop()


def _check_ledgers(nodes: list[ClusterNode]) -> int:
    intervals = []
    for n in nodes:
        intervals += seat_intervals(n.url, n.export())
    most, at = most_held_at_once(intervals)
    assert most <= SEATS + OVERDRAFT, (
        most,
        at,
        [i for i in intervals if i.start_ms <= at < i.end_ms],
    )
    return most


def test_racing_checkouts_across_nodes_never_exceed_seats_and_overdraft(
    nodes: list[ClusterNode],
) -> None:
    load = Load([n.url for n in nodes], clients=12)
    load.start()
    time.sleep(8)
    load.finish()
    assert not load.errors, load.errors
    assert load.granted > 20 and load.denied > 0, (load.granted, load.denied)
    most = _check_ledgers(nodes)
    # The load did fill the seats: the check above is not vacuous.
    assert most == SEATS + OVERDRAFT
    cluster = httpx.get(f"{nodes[0].url}/v1/cluster").json()
    assert cluster["mode"] == "etcd" and cluster["quorum"] is True
    assert sorted(m["url"] for m in cluster["members"]) == sorted(n.url for n in nodes)
    assert all(m["alive"] for m in cluster["members"])
    seats = httpx.get(f"{nodes[1].url}/v1/seats").json()
    assert {f["feature"] for f in seats["features"]} == {FEATURE}
