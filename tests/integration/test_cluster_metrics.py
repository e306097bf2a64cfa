"""meterbox_cluster_* through a real /metrics scrape of real nodes on a real etcd cluster.

Node 2 talks to etcd member 2 only (support.cluster wiring), so pausing that member
cuts node 2 off from quorum while nodes 0 and 1 keep it: the scrape of node 2 must
then say quorum 0 and count one loss, and say quorum 1 again once the member is back.
A single server exports no cluster metrics at all. A usage request resent to another
node shows as a key published on the first and a remote hit on the second, and the
first node's open quota block as units held.
"""

from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.cluster import FEATURE, LICENSE_ID, QUOTA_METER, ClusterNode
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(300)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"{url}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _wait(
    url: str, name: str, value: float, timeout: float = 10.0
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = _scrape(url)
        if samples.get((name, ())) == value or time.monotonic() > deadline:
            assert samples.get((name, ())) == value, (name, samples.get((name, ())))
            return samples
        time.sleep(0.2)


def test_a_scrape_shows_quorum_members_etcd_times_and_seats_held(
    cluster_nodes: list[ClusterNode], etcd_cluster: EtcdCluster
) -> None:
    nodes = cluster_nodes
    for i in range(2):
        r = httpx.post(f"{nodes[0].url}/v1/seats/checkout",
                       json={"feature": FEATURE, "client_id": f"m{i}"}, timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
    samples = _wait(nodes[1].url, "meterbox_cluster_members", 3)
    assert samples["meterbox_cluster_quorum", ()] == 1
    assert samples["meterbox_cluster_quorum_lost_total", ()] == 0
    # Seats are counted every 5 s: node 1 sees the two seats node 0 holds.
    deadline = time.monotonic() + 12
    held = (("feature", FEATURE), ("license", LICENSE_ID))
    while _scrape(nodes[1].url).get(("meterbox_cluster_seats_held", held)) != 2:
        assert time.monotonic() < deadline, "seats held cluster-wide never reached 2"
        time.sleep(0.5)
    types = {f.name: f.type for f in text_string_to_metric_families(
        httpx.get(f"{nodes[0].url}/metrics", timeout=10).text)}  # fmt: skip
    assert types["meterbox_cluster_quorum"] == types["meterbox_cluster_members"] == "gauge"
    assert types["meterbox_cluster_quorum_lost"] == "counter"
    assert types["meterbox_cluster_etcd_request_seconds"] == "histogram"
    # Node 0 made the transactions; its histogram counted them, each bucket cumulative.
    own = _scrape(nodes[0].url)
    txn = {k[1]: v for k, v in own.items() if k[0] == "meterbox_cluster_etcd_request_seconds_bucket"
           and ("operation", "kv/txn") in k[1]}  # fmt: skip
    count = own["meterbox_cluster_etcd_request_seconds_count", (("operation", "kv/txn"),)]
    assert count >= 2
    assert txn[(("le", "+Inf"), ("operation", "kv/txn"))] == count
    assert sorted(txn.values()) == [txn[k] for k in sorted(txn, key=lambda k: _le(k[0][1]))]
    assert own["meterbox_cluster_etcd_request_seconds_sum", (("operation", "kv/txn"),)] > 0
    assert (
        own["meterbox_cluster_etcd_request_seconds_count", (("operation", "lease/keepalive"),)] > 0
    )

    # Node 2 loses its only etcd member: quorum 0, one loss counted, members 0.
    etcd_cluster.pause(2)
    try:
        cut = _wait(nodes[2].url, "meterbox_cluster_quorum", 0)
        assert cut["meterbox_cluster_quorum_lost_total", ()] == 1
        assert cut["meterbox_cluster_members", ()] == 0
        assert _scrape(nodes[0].url)["meterbox_cluster_quorum", ()] == 1
    finally:
        etcd_cluster.resume(2)
    back = _wait(nodes[2].url, "meterbox_cluster_quorum", 1, timeout=20)
    assert back["meterbox_cluster_quorum_lost_total", ()] == 1


def _le(text: str) -> float:
    return float("inf") if text == "+Inf" else float(text)


def test_a_scrape_shows_shared_keys_and_the_quota_held_in_blocks(
    cluster_nodes: list[ClusterNode],
) -> None:
    a, b, _ = cluster_nodes
    body = {"meter": QUOTA_METER, "amount": 3, "client_id": "m", "idempotency_key": "k-1"}
    first = httpx.post(f"{a.url}/v1/usage", json=body, timeout=10)
    assert first.status_code == 200, first.text
    # The same request resent to node B: answered from the key node A published.
    again = httpx.post(f"{b.url}/v1/usage", json=body, timeout=10)
    assert again.status_code == 200, again.text
    own, other = _scrape(a.url), _scrape(b.url)
    assert own["meterbox_cluster_idem_keys_published_total", ()] == 1
    assert own["meterbox_cluster_idem_remote_hits_total", ()] == 0
    assert other["meterbox_cluster_idem_remote_hits_total", ()] == 1
    assert other["meterbox_usage_replays_total", ()] == 1
    assert other["meterbox_cluster_idem_keys_published_total", ()] == 0
    assert own["meterbox_cluster_idem_publish_failures_total", ()] == 0
    # Node A holds one block of the meter and granted 3 units from it; B holds none.
    pool = (("license", LICENSE_ID), ("meter", QUOTA_METER))
    held = own["meterbox_cluster_quota_held_units", pool]
    assert held >= 3
    assert own["meterbox_cluster_quota_unused_units", pool] == held - 3
    assert ("meterbox_cluster_quota_held_units", pool) not in other
    assert own["meterbox_cluster_quota_idle_returns_total", ()] == 0
    types = {f.name: f.type for f in text_string_to_metric_families(
        httpx.get(f"{a.url}/metrics", timeout=10).text)}  # fmt: skip
    assert types["meterbox_cluster_quota_held_units"] == "gauge"
    assert types["meterbox_cluster_quota_unused_units"] == "gauge"
    assert types["meterbox_cluster_idem_keys_published"] == "counter"
    assert types["meterbox_cluster_idem_remote_hits"] == "counter"
    assert types["meterbox_cluster_idem_publish_failures"] == "counter"
