"""A top-up or license notice imported on one node reaches every node (issue 21).

Three real ``meterbox server run --cluster`` nodes on a real three-member etcd cluster;
the documents are written by the real ``meterbox vendor`` commands and imported through
one node's admin API, as an operator does. The other nodes apply them from etcd within
a few housekeeping rounds (``_cluster/_imports.py``): a suspension stops every node
granting, a resume lets them all grant again, a node that was down when the notice was
imported applies it when it comes back, and a top-up imported on one node lets another
node, which had used the whole limit itself, grant the new units. A document put into
etcd by someone else than the vendor (not signed by the vendor's key) is not applied.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import RecordType
from meterbox.licenses import LicenseNotice
from meterbox.server._cluster import Etcd, parse_cluster_url
from meterbox.server._cluster._imports import import_key
from meterbox.vendorkit import keys as vendor_keys
from support.cluster import (
    FEATURE,
    LICENSE_ID,
    QUOTA_LIMIT,
    QUOTA_METER,
    ClusterNode,
)
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def nodes(cluster_licence_nodes: list[ClusterNode]) -> list[ClusterNode]:
    return cluster_licence_nodes


def vendor(node: ClusterNode, tmp_path: Path, *args: str) -> bytes:
    out = tmp_path / f"doc-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    subprocess.run(
        [sys.executable, "-m", "meterbox", "vendor", *args, "--home", str(node.site.home),
         "--license", LICENSE_ID, "-o", str(out)],
        check=True, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    return out.read_bytes()


def import_on(node: ClusterNode, blob: bytes) -> dict[str, object]:
    r = httpx.post(
        f"{node.url}/v1/admin/import",
        content=blob,
        headers={"Authorization": f"Bearer {node.site.token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    answer: dict[str, object] = r.json()
    return answer


def checkout(node: ClusterNode, who: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/v1/seats/checkout", json={"feature": FEATURE, "client_id": who}, timeout=10
    )


def use(node: ClusterNode, amount: int) -> httpx.Response:
    body = {"meter": QUOTA_METER, "amount": amount, "client_id": "c",
            "idempotency_key": uuid.uuid4().hex}  # fmt: skip
    return httpx.post(f"{node.url}/v1/usage", json=body, timeout=10)


def within(seconds: float, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not applied on every node in time"
        time.sleep(0.2)


def suspended(r: httpx.Response) -> bool:
    return r.status_code == 403 and r.json()["error"]["code"] == "license_suspended"


def test_a_notice_imported_on_one_node_binds_every_node(
    nodes: list[ClusterNode], tmp_path: Path
) -> None:
    assert all(checkout(n, f"before-{i}").status_code == 200 for i, n in enumerate(nodes[:2]))
    answer = import_on(nodes[0], vendor(nodes[0], tmp_path, "suspend", "--reason", "unpaid"))
    assert (answer["standing"], answer["cluster"]) == ("suspended", "published to the other nodes")
    within(15, lambda: all(suspended(checkout(n, "after")) for n in nodes))
    # The other nodes' own ledgers hold the suspension, applied there.
    for n in nodes[1:]:
        kinds = [r.type for r in n.export()]
        assert RecordType.LICENSE_SUSPENDED in kinds

    # A node that is down when the next notice is imported applies it when it is back.
    nodes[2].stop()
    import_on(nodes[1], vendor(nodes[1], tmp_path, "resume"))
    within(15, lambda: all(checkout(n, "resumed").status_code == 200 for n in nodes[:2]))
    nodes[2].start()
    within(15, lambda: checkout(nodes[2], "back").status_code == 200)


def test_a_top_up_imported_on_one_node_lets_another_grant_it(
    nodes: list[ClusterNode], tmp_path: Path
) -> None:
    # Node 0 uses the whole shared limit itself, then is refused.
    for _ in range(QUOTA_LIMIT // 50):
        assert use(nodes[0], 50).status_code == 200
    assert use(nodes[0], 1).status_code == 402
    answer = import_on(
        nodes[2], vendor(nodes[2], tmp_path, "topup", "--meter", f"{QUOTA_METER}=40")
    )
    assert answer["cluster"] == "published to the other nodes"
    # Node 0 did not import the top-up: its engine learns it from etcd, and grants.
    within(15, lambda: use(nodes[0], 10).status_code == 200)
    kinds = [r.type for r in nodes[0].export()]
    assert RecordType.TOPUP_IMPORTED in kinds
    # The top-up raised the shared limit once: 40 more over the whole cluster, not 120.
    granted = 10
    for n in (*nodes, *nodes, *nodes):
        while use(n, 5).status_code == 200:
            granted += 5
    assert granted <= 40, granted


def test_a_document_not_signed_by_the_vendor_is_not_applied(
    nodes: list[ClusterNode], etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    etcd = Etcd(parse_cluster_url(etcd_cluster.cluster_url), timeout=5)
    stranger = vendor_keys.init(tmp_path / "stranger")
    now = datetime.now(UTC).replace(microsecond=0)
    forged = LicenseNotice("ntc_forged", LICENSE_ID, "suspend", 1, now).sign(stranger.signer())
    etcd.put(import_key(LICENSE_ID, "notice", "ntc_forged", 1), forged)
    etcd.put(import_key(LICENSE_ID, "notice", "junk", 2), b"not a notice")
    time.sleep(5)  # several housekeeping rounds
    assert all(checkout(n, f"still-{i}").status_code == 200 for i, n in enumerate(nodes))
    assert all(RecordType.LICENSE_SUSPENDED not in [r.type for r in n.export()] for n in nodes)
