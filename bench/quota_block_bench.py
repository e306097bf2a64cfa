"""etcd round trips per usage event against the quota block size (docs/adr/0025).

Starts a real three-member etcd cluster on loopback (``/usr/bin/etcd``, as the tests
do) and, for each block size, three cluster nodes (:class:`ClusterQuota` objects, each
with its own etcd lease, one thread each) that record one-unit usage events of one
shared meter as fast as they can. The ledger is left out (``submit`` returns a resolved
future): this measures what etcd adds, the ledger's own cost is in "Ledger throughput".

Two figures per block size:

* *throughput*: a pool far larger than the run, so blocks are taken and never refused:
  etcd requests per usage event (pool reads, transactions, retries after losing a
  compare to another node), events per second, and the slowest event (one that took a
  block, with the retries);
* *tail*: a pool of ``--tail-limit`` units, the three nodes taking turns until the
  first refusal: how much of the limit was granted before a request was refused while
  units were still held, unused, in another node's block.

Run:

    .venv/bin/python bench/quota_block_bench.py [--events 2000] [--sizes 1,4,16,64,256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from meterbox.errors import QuotaExceeded  # noqa: E402
from meterbox.ledger.records import RecordPayload, Usage  # noqa: E402
from meterbox.server._cluster import Etcd, parse_cluster_url  # noqa: E402
from meterbox.server._cluster._quota import (  # noqa: E402
    ClusterQuota,
    EtcdNodeLease,
    QuotaConfig,
    QuotaStore,
)
from support.etcd import EtcdCluster  # noqa: E402


def _done(_: RecordPayload) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(None)
    return f


def _nodes(cluster: EtcdCluster, license_id: str, size: int) -> list[ClusterQuota]:
    out = []
    for i in range(3):
        store = QuotaStore(Etcd(parse_cluster_url(cluster.cluster_url), timeout=2.0))
        lease = EtcdNodeLease(store, ttl_s=10).start()
        out.append(
            ClusterQuota(
                store,
                node=f"n{i}",
                lease=lease,
                submit=_done,
                license_ids=[license_id],
                config=QuotaConfig(block_size=size, members=3),
            )
        )
    return out


def throughput(cluster: EtcdCluster, size: int, events: int) -> tuple[float, float, float]:
    lic = f"tp-{size}"
    pool = (lic, "runs", "total")
    nodes = _nodes(cluster, lic, size)
    slowest = [0.0] * 3

    def run(i: int) -> None:
        q = nodes[i]
        for _ in range(events):
            t0 = time.perf_counter()
            q.charge(pool, limit=10**9, over_limit="refuse", record=Usage(meter="runs", amount=1))
            slowest[i] = max(slowest[i], time.perf_counter() - t0)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    trips = sum(q.round_trips for q in nodes)
    for q in nodes:
        q.give_back()
    return trips / (3 * events), 3 * events / elapsed, max(slowest) * 1000


def tail(cluster: EtcdCluster, size: int, limit: int) -> int:
    lic = f"tail-{size}"
    pool = (lic, "runs", "total")
    nodes = _nodes(cluster, lic, size)
    granted = 0
    while True:
        q = nodes[granted % 3]
        try:
            q.charge(pool, limit=limit, over_limit="refuse", record=Usage(meter="runs", amount=1))
        except QuotaExceeded:
            break
        granted += 1
    for q in nodes:
        q.give_back()
    return granted


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=2000, help="usage events per node")
    p.add_argument("--sizes", default="1,4,16,64,256")
    p.add_argument("--tail-limit", type=int, default=3000)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        cluster = EtcdCluster.create(Path(tmp))
        try:
            cluster.start()
            print(
                "| block size | etcd requests per event | events/s (3 nodes) | slowest event (ms) "
                f"| granted before the first refusal (limit {args.tail_limit}) |"
            )
            print("|---:|---:|---:|---:|---:|")
            for size in sizes:
                per_event, rate, slow = throughput(cluster, size, args.events)
                got = tail(cluster, size, args.tail_limit)
                print(
                    f"| {size} | {per_event:.3f} | {rate:,.0f} | {slow:.1f} "
                    f"| {got} ({100 * got / args.tail_limit:.1f} %) |",
                    flush=True,
                )
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
