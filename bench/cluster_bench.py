"""A cluster against a single server: checkouts/s, usage/s and failover after kill -9.

Throughput: the same license (``--seats`` seats, an unlimited meter and a ``refuse``
meter with a limit far above what a run uses) served by one single server (no etcd)
and by three nodes sharing a real three-member etcd cluster on loopback. ``--clients``
client threads, each with its own HTTP connection, spread round-robin over the nodes:

- checkouts/s: a checkout and its release (two requests, one seat);
- usage/s: ``POST /v1/usage`` with a fresh idempotency key each time, on the unlimited
  meter and on the limited one (which in a cluster draws on quota blocks, ADR 0032).

Each figure is the median of ``--repeats`` runs of ``--seconds`` each. Everything runs
on one machine: three nodes and three etcd members share its cores with the clients,
so the ratio says what consensus costs here, not how far a real cluster scales out.

Failover: a client SDK :class:`~meterbox.client.Client` given the three nodes' URLs
holds a seat and sends usage through the first; that node is killed with SIGKILL, and
the clock runs until the client has a seat from another node (checkout) and a usage
event acknowledged by another node. The killed node is restarted before the next of
``--failovers`` rounds. Median and worst are reported.

Run:

    PYTHONPATH=src:tests .venv/bin/python bench/cluster_bench.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx

from meterbox.client import Client, RetryConfig
from meterbox.licenses import Meter
from support.cluster import FEATURE, ClusterNode, make_cluster_site
from support.etcd import EtcdCluster
from support.server_proc import ServerProcess

OPEN_METER, LIMITED_METER = "runs", "jobs"


def _run_clients(
    urls: Sequence[str], clients: int, seconds: float, work: Callable[[httpx.Client, int], int]
) -> float:
    """Operations per second of ``clients`` threads running ``work`` for ``seconds``."""
    done = [0] * clients
    errors: list[str] = []
    stop = time.monotonic() + seconds
    start = threading.Barrier(clients + 1)

    def loop(i: int) -> None:
        with httpx.Client(base_url=urls[i % len(urls)], timeout=10) as c:
            start.wait()
            n = 0
            while time.monotonic() < stop:
                try:
                    done[i] += work(c, n)
                except (httpx.HTTPError, AssertionError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                n += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.monotonic()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return sum(done) / (time.monotonic() - began)


def checkout_release(c: httpx.Client, n: int) -> int:
    r = c.post("/v1/seats/checkout", json={"feature": FEATURE, "client_id": f"b{id(c)}-{n}"})
    assert r.status_code == 200, r.text
    r2 = c.post("/v1/seats/release", json={"lease_id": r.json()["lease_id"]})
    assert r2.status_code == 200, r2.text
    return 1


def usage(meter: str) -> Callable[[httpx.Client, int], int]:
    def work(c: httpx.Client, n: int) -> int:
        key = uuid.uuid4().hex
        body = {"meter": meter, "amount": 1, "client_id": "bench", "idempotency_key": key}
        r = c.post("/v1/usage", json=body)
        assert r.status_code == 200, r.text
        return 1

    return work


WORKLOADS: dict[str, Callable[[httpx.Client, int], int]] = {
    "checkout + release /s": checkout_release,
    "usage /s (unlimited meter)": usage(OPEN_METER),
    "usage /s (limited meter)": usage(LIMITED_METER),
}


@contextlib.contextmanager
def single(root: Path, seats: int) -> Iterator[list[str]]:
    site = make_cluster_site(root, 1, meters=_meters(), seats=seats, overdraft=0, name="single")
    server = ServerProcess(site.nodes[0].data, root / "single.log")
    server.start()
    try:
        yield [server.url]
    finally:
        server.stop()


@contextlib.contextmanager
def three(root: Path, seats: int) -> Iterator[tuple[list[ClusterNode], EtcdCluster]]:
    (root / "etcd").mkdir(parents=True)
    etcd = EtcdCluster.create(root / "etcd")
    etcd.start()
    site = make_cluster_site(root, 3, meters=_meters(), seats=seats, overdraft=0, cluster_size=3)
    nodes = [ClusterNode(d, root, etcd, (0, 1, 2)) for d in site.nodes]
    try:
        for n in nodes:
            n.start()
        yield nodes, etcd
    finally:
        for n in nodes:
            n.stop()
        etcd.stop_all()


def _meters() -> dict[str, Meter]:
    return {OPEN_METER: Meter(limit=None), LIMITED_METER: Meter(limit=10**12)}


def throughput(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with single(Path(tmp) / "one", args.seats) as urls:
            out["1 server"] = _measure(urls, args)
        with three(Path(tmp) / "three", args.seats) as (nodes, _):
            out["3 nodes"] = _measure([n.url for n in nodes], args)
    return out


def _measure(urls: Sequence[str], args: argparse.Namespace) -> dict[str, float]:
    figures = {}
    for name, work in WORKLOADS.items():
        runs = [_run_clients(urls, args.clients, args.seconds, work) for _ in range(args.repeats)]
        figures[name] = statistics.median(runs)
    return figures


def failover(args: argparse.Namespace) -> dict[str, list[float]]:
    seat_s: list[float] = []
    usage_s: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, three(Path(tmp), args.seats) as (nodes, _):
        for round_ in range(args.failovers):
            first = nodes[round_ % len(nodes)]
            seat, used = _one_failover(first, nodes, Path(tmp) / f"spool{round_}.db")
            seat_s.append(seat)
            usage_s.append(used)
            first.start()
    return {"seat": seat_s, "usage": usage_s}


def _one_failover(
    first: ClusterNode, nodes: Sequence[ClusterNode], spool: Path
) -> tuple[float, float]:
    urls = [first.url] + [n.url for n in nodes if n is not first]
    client = Client(
        urls,
        spool=spool,
        client_id=f"failover-{spool.stem}",
        timeout=2.0,
        retry=RetryConfig(base_seconds=0.05, cap_seconds=0.2),
    )
    try:
        client.checkout(FEATURE)
        client.record(OPEN_METER, 1)
        client.flush()
        first.kill9()
        killed = time.monotonic()
        seat = _until(lambda: client.checkout(FEATURE), killed)
        client.record(OPEN_METER, 1)
        return seat, _until(lambda: _flushed(client), killed)
    finally:
        client.close()


def _flushed(client: Client) -> None:
    result = client.flush()
    if result.pending:
        raise RuntimeError("usage not yet acknowledged")


def _until(attempt: Callable[[], object], since: float) -> float:
    deadline = since + 60
    while True:
        try:
            attempt()
            return time.monotonic() - since
        except Exception:  # any failure of the attempt: try again
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seats", type=int, default=200)
    parser.add_argument("--failovers", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = throughput(args)
    fo = failover(args)
    if args.json:
        print(json.dumps({"throughput": rows, "failover": fo}, indent=2))
        return
    print(f"{'':30} {'1 server':>10} {'3 nodes':>10} {'ratio':>7}")
    for name in WORKLOADS:
        one, three_ = rows["1 server"][name], rows["3 nodes"][name]
        print(f"{name:30} {one:10.0f} {three_:10.0f} {three_ / one:7.2f}")
    for what, times in fo.items():
        ms = sorted(t * 1000 for t in times)
        print(
            f"failover to a {what} from another node after kill -9: median "
            f"{statistics.median(ms):.0f} ms, worst {ms[-1]:.0f} ms (of {len(ms)})"
        )


if __name__ == "__main__":
    main()
