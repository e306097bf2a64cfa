"""What TLS to etcd costs a node: call latency over plain HTTP against etcds:// (ADR 0035).

Starts two real three-member etcd clusters on loopback (``/usr/bin/etcd``, as the tests
do): one plain, one with TLS on its client URLs and ``--client-cert-auth`` (certificates
made with ``cryptography``). Against each, one :class:`~meterbox.server._cluster.Etcd`
client makes the calls a checkout makes (lease grant, keys-only range, create
transaction, lease revoke) ``--rounds`` times, and the start-up probe once. Sessions
are kept alive, as the node's worker threads keep theirs, so the TLS handshake is paid
once per thread and member, not per call; the probe, with fresh sessions, pays it.

Run:

    PYTHONPATH=src:tests .venv/bin/python bench/etcd_tls_bench.py [--rounds 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from meterbox.server._cluster import Etcd, etcd_tls, parse_cluster_url
from support.etcd import EtcdCluster


def _run(cluster: EtcdCluster, rounds: int) -> dict[str, float]:
    tls = None
    if cluster.tls is not None:
        t = cluster.tls
        tls = etcd_tls(tls=True, ca=t.ca, cert=t.client_cert, key=t.client_key)
    etcd = Etcd(parse_cluster_url(cluster.cluster_url), timeout=5, tls=tls)
    began = time.perf_counter()
    assert all(v is None for v in etcd.probe().values())
    probe_ms = (time.perf_counter() - began) * 1000
    checkout = []
    for i in range(rounds):
        t0 = time.perf_counter()
        lease = etcd.grant(10)
        etcd.range_prefix("/bench/seats/", keys_only=True)
        etcd.create(f"/bench/seats/{i}", b"x", lease)
        etcd.revoke(lease)
        checkout.append((time.perf_counter() - t0) * 1000)
    checkout.sort()
    return {
        "probe_ms": probe_ms,
        "checkout_median_ms": statistics.median(checkout),
        "checkout_p99_ms": checkout[int(len(checkout) * 0.99) - 1],
        "txn_mean_ms": 1000 * etcd.times.snapshot()["kv/txn"][1] / rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    rows = {}
    for name, tls in (("plain etcd://", False), ("TLS etcds://", True)):
        with tempfile.TemporaryDirectory() as tmp:
            cluster = EtcdCluster.create(Path(tmp), tls=tls)
            try:
                cluster.start()
                rows[name] = _run(cluster, args.rounds)
            finally:
                cluster.stop_all()
    print(f"{'':16} {'probe ms':>9} {'checkout p50':>13} {'p99':>8} {'txn mean':>9}")
    for name, r in rows.items():
        print(f"{name:16} {r['probe_ms']:9.1f} {r['checkout_median_ms']:13.2f} "
              f"{r['checkout_p99_ms']:8.2f} {r['txn_mean_ms']:9.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
