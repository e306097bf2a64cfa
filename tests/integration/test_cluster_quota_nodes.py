"""Three real ``meterbox server run --cluster`` nodes share a ``refuse`` meter's limit.

Every figure is summed from the nodes' exported, verified ledgers (docs/adr/0032):
clients on all nodes at once never get more units granted than the limit, and exactly
the limit when they ask for more; a node killed with SIGKILL while it holds a block
settles it when it comes back, and the cluster still stays within the limit; a node
that went idle gives its block back, so another node can grant up to the limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import Record, RecordType
from support.cluster import QUOTA_LIMIT, QUOTA_METER, ClusterNode, make_cluster_site
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(600)


def granted(records: Iterable[Record]) -> int:
    """Units of the quota meter this ledger granted within the limit (not flagged)."""
    total = 0
    for r in records:
        if r.payload.get("m") != QUOTA_METER:
            continue
        if r.type == RecordType.USAGE and not r.payload.get("f"):
            total += int(r.payload["a"])
        elif r.type == RecordType.USAGE_DECREMENT:
            total -= int(r.payload["a"])
    return total


def hammer(nodes: Sequence[ClusterNode], clients: int, per_client: int) -> dict[int, int]:
    """Clients spread over the nodes each ask for ``per_client`` single units."""
    counts: dict[int, int] = {}
    lock = threading.Lock()

    def client(n: int) -> None:
        url = nodes[n % len(nodes)].url
        with httpx.Client(timeout=10) as c:
            for i in range(per_client):
                r = c.post(
                    f"{url}/v1/usage",
                    json={
                        "meter": QUOTA_METER,
                        "amount": 1,
                        "client_id": f"client-{n}",
                        "idempotency_key": f"k-{n}-{i}",
                    },
                )
                with lock:
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return counts


def test_concurrent_usage_on_three_nodes_grants_exactly_the_shared_limit(
    cluster_nodes: list[ClusterNode],
) -> None:
    # 6 clients x 80 units = 480 asked of a limit of 300: demand exceeds it.
    counts = hammer(cluster_nodes, clients=6, per_client=80)
    assert set(counts) <= {200, 402, 409}, counts
    per_node = [granted(n.export()) for n in cluster_nodes]
    assert sum(per_node) == QUOTA_LIMIT, (per_node, counts)
    assert counts.get(200, 0) == QUOTA_LIMIT, counts
    # Every node granted some: the pool was shared, not held by one node.
    assert all(g > 0 for g in per_node), per_node


def test_node_killed_holding_a_block_settles_it_and_the_limit_holds(
    cluster_nodes: list[ClusterNode],
) -> None:
    # Each node takes a block, then node 0 dies without giving its block back.
    counts = hammer(cluster_nodes, clients=3, per_client=10)
    assert counts == {200: 30}, counts
    victim = cluster_nodes[0]
    victim.kill9()
    victim.start()
    counts = hammer(cluster_nodes, clients=6, per_client=80)
    assert set(counts) <= {200, 402, 409}, counts
    records = [n.export() for n in cluster_nodes]
    per_node = [granted(r) for r in records]
    # Exactly the limit: the dead node settled its block at what its ledger says it
    # granted from it (the fold's STATE row qb), and the rest went back to the pool.
    assert sum(per_node) == QUOTA_LIMIT, per_node
    settled = [
        r
        for r in records[0]
        if r.type == RecordType.QUOTA_BLOCK_RETURNED and r.payload["r"] != "unused"
    ]
    assert settled, "the restarted node settled no block it held before it died"
    assert all(r.payload["n"] > 0 or r.payload["u"] > 0 for r in settled), settled


#: Seconds without a draw after which a node gives its block back (a short test value).
IDLE_S = 2.0
#: Housekeeping checks idle blocks every cull_interval (5 s): two rounds, and a margin.
IDLE_WAIT_S = IDLE_S + 2 * 5.0 + 1.0


@pytest.fixture
def idle_nodes(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[list[ClusterNode]]:
    site = make_cluster_site(tmp_path)
    nodes = [ClusterNode(d, tmp_path, etcd_cluster, (0, 1, 2)) for d in site.nodes]
    for n in nodes:
        n.args += ("--cluster-quota-idle-s", str(IDLE_S))
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _use(url: str, amount: int, key: str) -> int:
    r = httpx.post(
        f"{url}/v1/usage",
        json={"meter": QUOTA_METER, "amount": amount, "client_id": "c", "idempotency_key": key},
        timeout=10,
    )
    assert r.status_code in (200, 402), r.text
    return r.status_code


def test_an_idle_node_gives_its_block_back_and_another_node_reaches_the_limit(
    idle_nodes: list[ClusterNode],
) -> None:
    a, b, _ = idle_nodes
    # Node A grants 5 units: it takes a block much larger than that, then goes idle.
    assert [_use(a.url, 1, f"a-{i}") for i in range(5)] == [200] * 5
    time.sleep(IDLE_WAIT_S)
    # Node B asks for the rest in steps of 5, then for more: the rest only is granted.
    rest = QUOTA_LIMIT - 5
    answers = [_use(b.url, 5, f"b-{i}") for i in range(rest // 5)]
    more = [_use(b.url, 1, f"b-more-{i}") for i in range(3)]
    per_node = [granted(n.export()) for n in idle_nodes]
    # Exactly the limit, counted from every node's verified ledger: A's unused units
    # reached B (without the give-back B stops at the limit minus A's block).
    assert per_node[:2] == [5, rest], (per_node, answers.count(402))
    assert sum(per_node) == QUOTA_LIMIT, per_node
    assert answers == [200] * (rest // 5) and more == [402] * 3
    returned = [
        r
        for r in a.export()
        if r.type == RecordType.QUOTA_BLOCK_RETURNED and r.payload["r"] == "unused"
    ]
    assert returned, "the idle node gave no block back"
    assert sum(r.payload["u"] for r in returned) == 5, [r.payload for r in returned]
