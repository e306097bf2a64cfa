"""meterbox nodes talk TLS to a real etcd cluster that requires client certificates.

The three etcd members serve TLS on their client URLs with ``--client-cert-auth``
(support.etcd ``etcd_tls_cluster``; the CA and certificates are made in the test).
Nodes holding the right CA and a client certificate share seats; a node with the
wrong CA, without a client certificate, with a client certificate from another CA
or speaking plain HTTP refuses to start, says why, and leaves its data untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.cluster import FEATURE, OVERDRAFT, SEATS, ClusterNode, make_cluster_site
from support.etcd import EtcdCluster, Pki
from support.server_proc import Data, free_port

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tls_nodes(tmp_path: Path, etcd_tls_cluster: EtcdCluster) -> Iterator[list[ClusterNode]]:
    site = make_cluster_site(tmp_path)
    nodes = [ClusterNode(d, tmp_path, etcd_tls_cluster, (0, 1, 2)) for d in site.nodes]
    try:
        for n in nodes:
            n.start()
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _checkout(url: str, client: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/seats/checkout", json={"feature": FEATURE, "client_id": client}, timeout=10
    )


def test_nodes_with_the_cluster_ca_and_a_client_certificate_share_seats(
    tls_nodes: list[ClusterNode],
) -> None:
    first, second, third = tls_nodes
    held = [_checkout(first.url, f"c{i}") for i in range(SEATS + OVERDRAFT)]
    assert [r.status_code for r in held] == [200] * (SEATS + OVERDRAFT), held[-1].text
    # The seats are shared: the other nodes see them taken in etcd.
    assert _checkout(second.url, "late").status_code == 409
    assert _checkout(third.url, "late").status_code == 409
    lease = held[0].json()["lease_id"]
    released = httpx.post(f"{first.url}/v1/seats/release", json={"lease_id": lease}, timeout=10)
    assert released.status_code == 200, released.text
    assert _checkout(third.url, "late").status_code == 200
    # Membership is read every tick (0.5 s): the last node to start shows up within it.
    deadline = time.monotonic() + 5
    while True:
        view = httpx.get(f"{second.url}/v1/cluster", timeout=10).json()
        if len(view["members"]) == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert view["quorum"] is True
    assert sorted(m["url"] for m in view["members"]) == sorted(n.url for n in tls_nodes)
    assert all(m["alive"] for m in view["members"])


def _snapshot(data: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(data)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(data.rglob("*"))
        if p.is_file()
    }


def _refused_start(site: Data, log: Path, args: list[str]) -> str:
    """Run ``server run`` with ``args``; it must exit non-zero without touching its data."""
    before = _snapshot(site.data)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    proc = subprocess.run(
        [sys.executable, "-m", "meterbox", "server", "run", "--data", str(site.data),
         "--port", str(port), "--log-level", "warning", *args],
        capture_output=True, text=True, timeout=90, env=env, check=False,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    log.write_text(out)
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert _snapshot(site.data) == before, "a refused start wrote to the data directory"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    return " ".join(out.split())


@pytest.fixture
def one_site(tmp_path: Path) -> Data:
    return make_cluster_site(tmp_path, nodes=1).nodes[0]


def test_a_node_with_the_wrong_ca_refuses_to_start(
    tmp_path: Path, etcd_tls_cluster: EtcdCluster, one_site: Data
) -> None:
    tls = etcd_tls_cluster.tls
    assert tls is not None
    stranger = Pki.create(tmp_path / "other-ca", name="someone else's CA")
    out = _refused_start(
        one_site,
        tmp_path / "wrong-ca.log",
        ["--cluster", etcd_tls_cluster.cluster_url, "--cluster-ca", str(stranger.ca),
         "--cluster-cert", str(tls.client_cert), "--cluster-key", str(tls.client_key)],
    )  # fmt: skip
    assert "presented a certificate this node does not trust" in out, out
    assert f"Expected a server certificate signed by a CA in {stranger.ca}" in out, out
    assert "CERTIFICATE_VERIFY_FAILED" in out, out
    assert "set cluster_ca to the CA that signed" in out.lower() or "Set cluster_ca" in out, out


def test_a_node_without_a_client_certificate_refuses_to_start(
    tmp_path: Path, etcd_tls_cluster: EtcdCluster, one_site: Data
) -> None:
    tls = etcd_tls_cluster.tls
    assert tls is not None
    out = _refused_start(
        one_site,
        tmp_path / "no-cert.log",
        ["--cluster", etcd_tls_cluster.cluster_url, "--cluster-ca", str(tls.ca)],
    )
    assert "refused this node's TLS connection" in out, out
    assert "Expected a client certificate (etcd runs with --client-cert-auth)" in out, out
    assert "cluster_cert and cluster_key" in out, out


def test_a_client_certificate_from_another_ca_refuses_the_start(
    tmp_path: Path, etcd_tls_cluster: EtcdCluster, one_site: Data
) -> None:
    tls = etcd_tls_cluster.tls
    assert tls is not None
    cert, key = Pki.create(tmp_path / "rogue").issue("rogue-node", server=False)
    out = _refused_start(
        one_site,
        tmp_path / "rogue.log",
        ["--cluster", etcd_tls_cluster.cluster_url, "--cluster-ca", str(tls.ca),
         "--cluster-cert", str(cert), "--cluster-key", str(key)],
    )  # fmt: skip
    assert "refused this node's TLS connection" in out, out
    assert f"cluster_cert {cert}" in out, out


def test_plain_http_to_a_tls_etcd_refuses_the_start(
    tmp_path: Path, etcd_tls_cluster: EtcdCluster, one_site: Data
) -> None:
    plain = etcd_tls_cluster.cluster_url.replace("etcds://", "etcd://")
    out = _refused_start(one_site, tmp_path / "plain.log", ["--cluster", plain])
    assert "closed the connection before answering" in out, out
    assert "write the cluster URL as etcds://" in out, out


def test_a_missing_ca_file_refuses_the_start(
    tmp_path: Path, etcd_tls_cluster: EtcdCluster, one_site: Data
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    out = _refused_start(
        one_site,
        tmp_path / "missing.log",
        ["--cluster", etcd_tls_cluster.cluster_url, "--cluster-ca", str(missing)],
    )
    assert "The cluster_ca file cannot be read" in out, out
    assert "No such file or directory" in out, out


def test_tls_to_a_plain_etcd_refuses_the_start(
    tmp_path: Path, etcd_cluster: EtcdCluster, one_site: Data
) -> None:
    pki = Pki.create(tmp_path / "pki")
    cert, key = pki.issue("node", server=False)
    tls_url = etcd_cluster.cluster_url.replace("etcd://", "etcds://")
    out = _refused_start(
        one_site,
        tmp_path / "tls-to-plain.log",
        ["--cluster", tls_url, "--cluster-ca", str(pki.ca),
         "--cluster-cert", str(cert), "--cluster-key", str(key)],
    )  # fmt: skip
    assert "does not speak TLS" in out, out
    assert "the member answers plain HTTP" in out, out
    assert "Write the cluster URL as etcd://" in out, out
