"""The shipped cluster configuration works: deploy/cluster/etcd.conf.yml runs a real etcd
with client TLS and client-certificate auth, and deploy/cluster/meterbox-node.toml is a
usable TLS configuration for it.

The etcd file is run as one member on loopback: its addresses, the initial cluster and
its certificate paths are replaced by test ones (certificates made with ``cryptography``);
every other line, the transport-security sections included, is the shipped text.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from meterbox.errors import ConfigError
from meterbox.server._cluster import Etcd, etcd_tls, parse_cluster_url
from meterbox.server._config import load
from support.etcd import ETCD_BINARY, EtcdTls, Pki, _free_ports

pytestmark = pytest.mark.timeout(120)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "cluster"


def _member_config(
    tmp_path: Path, tls: EtcdTls, client: int, peer: int, *, gateway: bool = True
) -> Path:
    text = (DEPLOY / "etcd.conf.yml").read_text()
    if not gateway:
        text = text.replace("enable-grpc-gateway: true", "")
    cert, key = tls.member_certs["node1"]
    text = text.replace("10.0.0.11:2379", f"127.0.0.1:{client}")
    text = text.replace("10.0.0.11:2380", f"127.0.0.1:{peer}")
    text = re.sub(r"^initial-cluster: .*$", f"initial-cluster: node1=https://127.0.0.1:{peer}",
                  text, flags=re.M)  # fmt: skip
    text = text.replace("/var/lib/meterbox-etcd", str(tmp_path / "etcd-data"))
    for shipped, ours in (
        ("/etc/meterbox/etcd-server-key.pem", key),
        ("/etc/meterbox/etcd-server.pem", cert),
        ("/etc/meterbox/etcd-peer-key.pem", key),
        ("/etc/meterbox/etcd-peer.pem", cert),
        ("/etc/meterbox/site-ca.pem", tls.ca),
    ):
        assert shipped in text, shipped
        text = text.replace(shipped, str(ours))
    assert "client-cert-auth: true" in text
    assert ("enable-grpc-gateway: true" in text) is gateway
    out = tmp_path / "etcd.conf.yml"
    out.write_text(text)
    return out


def _wait_answering(etcd: Etcd, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while (seen := list(etcd.probe().values())) != [None]:
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, seen
        time.sleep(0.2)


def _start(
    tmp_path: Path, *, gateway: bool = True, hosts: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[EtcdTls, int, subprocess.Popen[bytes]]:
    pki = Pki.create(tmp_path / "pki")
    cert, key = pki.issue("meterbox-node", server=False)
    tls = EtcdTls(pki, {"node1": pki.issue("node1", server=True, hosts=hosts)}, cert, key)
    client, peer = _free_ports(2)
    conf = _member_config(tmp_path, tls, client, peer, gateway=gateway)
    with (tmp_path / "etcd.log").open("wb") as log:
        proc = subprocess.Popen([ETCD_BINARY, "--config-file", str(conf)], stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip
    return tls, client, proc


def test_the_shipped_etcd_config_serves_tls_to_nodes_with_a_client_certificate(
    tmp_path: Path,
) -> None:
    tls, client, proc = _start(tmp_path)
    try:
        good = etcd_tls(tls=True, ca=tls.ca, cert=tls.client_cert, key=tls.client_key)
        etcd = Etcd(parse_cluster_url(f"etcds://127.0.0.1:{client}"), timeout=2, tls=good)
        _wait_answering(etcd, proc, tmp_path / "etcd.log")
        etcd.put("/deploy/check", b"1")
        assert [kv.value for kv in etcd.range_prefix("/deploy/")] == [b"1"]
        # The same member refuses a node without a client certificate.
        bare = Etcd(etcd.endpoints, timeout=2, tls=etcd_tls(tls=True, ca=tls.ca, cert=None,
                                                            key=None))  # fmt: skip
        with pytest.raises(ConfigError, match="refused this node's TLS connection"):
            bare.probe()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _refusal(tls: EtcdTls, client: int, proc: subprocess.Popen[bytes]) -> str:
    """Probe the member with the node's good TLS settings until the check refuses it."""
    good = etcd_tls(tls=True, ca=tls.ca, cert=tls.client_cert, key=tls.client_key)
    etcd = Etcd(parse_cluster_url(f"etcds://127.0.0.1:{client}"), timeout=2, tls=good)
    deadline = time.monotonic() + 30
    while True:
        try:
            problems = etcd.probe()
        except ConfigError as exc:
            return str(exc)
        assert proc.poll() is None and time.monotonic() < deadline, problems
        time.sleep(0.2)


def test_an_etcd_config_without_the_gateway_refuses_the_node_s_start(tmp_path: Path) -> None:
    tls, client, proc = _start(tmp_path, gateway=False)
    try:
        message = _refusal(tls, client, proc)
        assert "does not serve its HTTP/JSON gateway" in message
        assert "enable-grpc-gateway: true" in message
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_the_shipped_node_config_is_a_tls_cluster_configuration() -> None:
    loaded = load({}, DEPLOY / "meterbox-node.toml", environ={})
    conf = loaded.config
    assert conf.cluster == "etcds://10.0.0.11:2379,10.0.0.12:2379,10.0.0.13:2379"
    assert conf.cluster_ca == Path("/etc/meterbox/site-ca.pem")
    assert conf.cluster_cert is not None and conf.cluster_key is not None
    assert loaded.sources["cluster_key"].startswith("file ")


def test_a_member_certificate_for_another_name_refuses_the_node_s_start(tmp_path: Path) -> None:
    # The member's certificate (from the right CA) names etcd1.example only; the node
    # lists the member as 127.0.0.1, which the certificate does not carry.
    tls, client, proc = _start(tmp_path, hosts=("etcd1.example",))
    try:
        message = _refusal(tls, client, proc)
        assert "presented a certificate this node does not trust" in message
        assert "Expected a certificate for 127.0.0.1" in message
        assert "IP address mismatch" in message
    finally:
        proc.terminate()
        proc.wait(timeout=20)
