"""One cluster node's quota, in its own process, for the cluster quota tests.

``python -m support.quota_node --endpoints h:p,... --ledger DIR --node ID ...`` creates
(or opens) a real ledger in DIR, keeps an etcd lease alive, and charges ``--units``
one-unit usage events of one meter through :class:`ClusterQuota`, each acknowledged only
once its ledger record is durable. It prints one JSON line ``{"granted": n, "denied": d}``
and then, with ``--hold``, keeps running holding its blocks (until the test kills it), or
gives its blocks back and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from concurrent.futures import Future
from pathlib import Path

from meterbox.clock import SystemClock
from meterbox.errors import QuotaExceeded
from meterbox.ledger import Appended, LedgerWriter
from meterbox.ledger.records import RecordPayload, Usage
from meterbox.server._cluster import Etcd, parse_cluster_url
from meterbox.server._cluster._quota import (
    ClusterQuota,
    EtcdNodeLease,
    QuotaConfig,
    QuotaStore,
)
from meterbox.server._errors import ClusterUnavailableError
from support.ledger import VENDOR, VENDOR_ID


def open_ledger(path: Path) -> LedgerWriter:
    if (path / "ledger.mbl").exists():
        return LedgerWriter.open(path, clock=SystemClock(), replay_after=0)
    return LedgerWriter.create(
        path, vendor_ledger_key=VENDOR.public_key(), vendor_key_id=VENDOR_ID, clock=SystemClock()
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoints", required=True)
    p.add_argument("--ledger", required=True, type=Path)
    p.add_argument("--node", required=True)
    p.add_argument("--license", default="lic-1")
    p.add_argument("--meter", default="runs")
    p.add_argument("--limit", type=int, required=True)
    p.add_argument("--units", type=int, required=True)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--lease-ttl", type=int, default=2)
    p.add_argument("--hold", action="store_true")
    args = p.parse_args(argv)

    etcd = QuotaStore(Etcd(parse_cluster_url("etcd://" + args.endpoints)))
    lease = EtcdNodeLease(etcd, ttl_s=args.lease_ttl).start()
    writer = open_ledger(args.ledger)

    def submit(record: RecordPayload) -> Future[Appended]:
        return writer.submit(record.record_type, record.to_map())

    quota = ClusterQuota(
        etcd,
        node=args.node,
        lease=lease,
        submit=submit,
        license_ids=[args.license],
        config=QuotaConfig(block_size=args.block_size, members=3),
    )
    pool = (args.license, args.meter, "total")
    granted = denied = 0
    for _ in range(args.units):
        record = Usage(meter=args.meter, amount=1, license_id=args.license, client_id=args.node)
        try:
            quota.charge(
                pool, limit=args.limit, over_limit="refuse", record=record
            ).appended.result()
        except (QuotaExceeded, ClusterUnavailableError):
            denied += 1
            continue
        granted += 1
    print(json.dumps({"granted": granted, "denied": denied}), flush=True)
    if args.hold:
        threading.Event().wait()
    quota.give_back()
    lease.stop()
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
