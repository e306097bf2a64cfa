"""A usage event resent to a second node after a lost answer is counted once (ADR 0033).

Three real ``meterbox server run --cluster`` nodes and a real three-member etcd on
loopback. Node A records an event and is killed with SIGKILL; the client resends the
event, with the same idempotency key, to node B:

* A published the key before answering, so B answers A's outcome (the same body a
  duplicate on A gets) and records nothing;
* A died between its ledger commit and its publication (the key is taken out of etcd,
  which is what etcd holds when that happens), so B records the event too: both
  ledgers hold it, and the vendor's ingest of every node's report bills it once and
  reports ``usage.redelivered``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterbox.ledger import RecordType
from meterbox.server._cluster import Etcd, parse_cluster_url
from meterbox.server._cluster._idem import idem_path
from meterbox.vendorkit import Period, VendorStore, bill
from meterbox.vendorkit.ingest import IngestOutcome, ingest
from support.cluster import LICENSE_ID, ClusterNode
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(600)

METER = "runs"


@pytest.fixture
def nodes(cluster_licence_nodes: list[ClusterNode]) -> list[ClusterNode]:
    return cluster_licence_nodes


def _use(node: ClusterNode, key: str, amount: int) -> httpx.Response:
    return httpx.post(
        f"{node.url}/v1/usage",
        json={"meter": METER, "amount": amount, "client_id": "client-1", "idempotency_key": key},
        timeout=10,
    )


def _report(node: ClusterNode) -> bytes:
    r = httpx.post(
        f"{node.url}/v1/admin/export",
        headers={"Authorization": f"Bearer {node.site.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.content


def _keys_on(node: ClusterNode) -> list[str]:
    return [
        str(r.payload.get("k"))
        for r in node.export()
        if r.type == RecordType.USAGE and r.payload.get("m") == METER
    ]


def _body(r: httpx.Response) -> dict[str, Any]:
    doc = dict(r.json())
    doc.pop("head", None)  # each node hands out its own ledger head
    return doc


def _ingest_all(nodes: list[ClusterNode], tmp_path: Path) -> list[IngestOutcome]:
    out = []
    for i, n in enumerate(nodes):
        path = tmp_path / f"report{i}.mbr"
        path.write_bytes(_report(n))
        outcome = ingest(n.site.home, path, now=datetime.now(UTC))
        assert outcome.accepted, (i, outcome.status, outcome.findings)
        out.append(outcome)
    return out


def _billed(home: Path) -> int:
    now = datetime.now(UTC)
    statement = bill(home, Period(now.year, now.month))
    with VendorStore.open(None, home=home) as db, db.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT coalesce(sum(amount), 0) FROM usage WHERE billed AND meter = 'runs'"
        ).scalar_one()
    used = sum(m.used for m in statement.meters if m.meter == METER)
    assert used == int(rows)
    return used


def test_a_resend_to_another_node_gets_the_first_nodes_answer(
    nodes: list[ClusterNode], tmp_path: Path
) -> None:
    a, b, c = nodes
    first = _use(a, "evt-1", 5)
    assert first.status_code == 200, first.text
    # The answer is lost to the client: A dies before it could be read.
    a.kill9()

    again = _use(b, "evt-1", 5)

    assert again.status_code == 200, again.text
    assert _body(again) == {**_body(first), "replayed": True}
    # The same key for another request is refused on any node, as on the first.
    other = _use(c, "evt-1", 6)
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_conflict"
    a.start()
    assert _keys_on(a) == ["evt-1"]
    assert _keys_on(b) == [] and _keys_on(c) == []
    outcomes = _ingest_all(nodes, tmp_path)
    assert not any(f.code.startswith("usage.redelivered") for o in outcomes for f in o.findings)
    assert _billed(a.site.home) == 5


def test_a_node_dead_before_publishing_leaves_two_copies_billed_once(
    nodes: list[ClusterNode], tmp_path: Path, etcd_cluster: EtcdCluster
) -> None:
    a, b, _ = nodes
    assert _use(a, "evt-0", 1).status_code == 200
    first = _use(a, "evt-2", 7)
    assert first.status_code == 200, first.text
    # A committed evt-2 to its ledger and died before its publication reached etcd.
    a.kill9()
    url = "etcd://" + ",".join(m.endpoint for m in etcd_cluster.members)
    etcd = Etcd(parse_cluster_url(url))
    path = idem_path(LICENSE_ID, METER, "evt-2")
    assert etcd.get_first([path]) is not None
    etcd.delete(path)

    again = _use(b, "evt-2", 7)

    assert again.status_code == 200, again.text
    assert again.json()["replayed"] is False  # B could not know: it recorded the event
    a.start()
    assert _keys_on(a) == ["evt-0", "evt-2"] and _keys_on(b) == ["evt-2"]
    outcomes = _ingest_all(nodes, tmp_path)
    found = [f for o in outcomes for f in o.findings if f.code == "usage.redelivered"]
    assert len(found) == 1 and found[0].severity == "info", found
    assert "1 usage events (7 units)" in found[0].message
    assert str(outcomes[0].instance_id)[:16] in found[0].message
    assert _billed(a.site.home) == 8
    # Once B published it, a third resend anywhere is answered from the cluster.
    third = _use(nodes[2], "evt-2", 7)
    assert third.status_code == 200 and third.json()["replayed"] is True
