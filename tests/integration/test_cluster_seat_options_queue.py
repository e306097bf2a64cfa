"""The site's options file and the seat queue hold across three real nodes (docs/adr/0034).

Three ``meterbox server run --cluster`` nodes, each its own data directory and ledger,
share one license's seats through a real three-member etcd cluster:

* a user limited to one seat who asks two nodes at the same moment, round after round,
  never holds two seats (counted over every node's exported, verified ledger);
* a seat reserved for group cfd stays free for cfd whatever node the outsiders ask;
* the first client to queue gets the next free seat whatever node it asked and
  whatever node the seat came free on; the others are told how many wait ahead, and
  a waiter whose node dies leaves the queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import RecordType
from meterbox.server._cluster._etcd import Etcd
from meterbox.server._cluster._url import Endpoint
from support.cluster import (
    FEATURE,
    LICENSE_ID,
    ClusterNode,
    make_cluster_site,
    most_held_at_once,
    seat_intervals,
)
from support.etcd import EtcdCluster

pytestmark = pytest.mark.timeout(600)

MAX_ONE = f"""\
version = 1

[feature.{FEATURE}]
max_per_user = 1
"""

RESERVE_CFD = f"""\
version = 1

[[feature.{FEATURE}.reserve]]
seats = 1
group = "cfd"
"""


def api_key(data: Path, name: str, group: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    out = subprocess.run(
        [sys.executable, "-m", "meterbox", "server", "keys", "create", "--data", str(data),
         "--name", name, "--group", group, "--json"],
        capture_output=True, text=True, timeout=120, check=True, env=env,
    )  # fmt: skip
    return str(json.loads(out.stdout)["token"])


Tokens = dict[tuple[int, str], str]
StartNodes = Callable[..., tuple[list[ClusterNode], Tokens]]


@pytest.fixture
def start_nodes(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[StartNodes]:
    """Three nodes with ``seats`` (no overdraft) and an options file.

    ``keys``: (node index, group) of the API keys to create before the nodes start;
    their tokens are returned by (node index, group).
    """
    started: list[ClusterNode] = []

    def start(
        seats: int, options: str | None = None, keys: tuple[tuple[int, str], ...] = ()
    ) -> tuple[list[ClusterNode], Tokens]:
        site = make_cluster_site(tmp_path, seats=seats, overdraft=0)
        wiring = [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
        nodes = [
            ClusterNode(d, tmp_path, etcd_cluster, w)
            for d, w in zip(site.nodes, wiring, strict=True)
        ]
        for n in nodes:
            if options is not None:
                (n.site.data / "options.toml").write_text(options)
        tokens = {(i, g): api_key(nodes[i].site.data, f"{g}-{i}", g) for i, g in keys}
        for n in nodes:
            n.start()
            started.append(n)
        return nodes, tokens

    try:
        yield start
    finally:
        for n in started:
            n.stop()


def checkout(
    url: str, client_id: str, *, token: str | None = None, **body: object
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(
        f"{url}/v1/seats/checkout",
        json={"feature": FEATURE, "client_id": client_id, **body},
        headers=headers,
        timeout=60,
    )


def release(url: str, lease_id: str, *, token: str | None = None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.post(f"{url}/v1/seats/release", json={"lease_id": lease_id}, headers=headers)
    assert r.status_code == 200, r.text


@contextlib.contextmanager
def kept(url: str, lease_id: str) -> Iterator[None]:
    """Heartbeat the lease (6 s long) until the block ends, so only a release frees it."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(1.5):
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{url}/v1/seats/heartbeat", json={"lease_id": lease_id})

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=10)


def at_once(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    """Run the calls at the same moment; their answers in order."""
    out: list[httpx.Response | None] = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def code(r: httpx.Response) -> str:
    return "ok" if r.status_code == 200 else str(r.json()["error"]["code"])


def test_a_user_limited_to_one_seat_asking_two_nodes_at_once_gets_one(
    start_nodes: StartNodes,
) -> None:
    nodes, _ = start_nodes(seats=3, options=MAX_ONE)
    rounds = 15
    for i in range(rounds):
        first, second = nodes[i % 3], nodes[(i + 1) % 3]
        answers = at_once(
            lambda n=first, i=i: checkout(n.url, f"ws-a-{i}", user="ann"),
            lambda n=second, i=i: checkout(n.url, f"ws-b-{i}", user="ann"),
        )
        assert sorted(code(r) for r in answers) == ["ok", "policy_denied"], [
            r.text for r in answers
        ]
        refused = next(r for r in answers if r.status_code != 200)
        assert "user 'ann' already holds 1" in refused.json()["error"]["message"]
        for node, r in zip((first, second), answers, strict=True):
            if r.status_code == 200:
                release(node.url, r.json()["lease_id"])
    # Another user is not held back by ann's limit.
    assert checkout(nodes[0].url, "ws-c", user="ann").status_code == 200
    assert checkout(nodes[1].url, "bob", user="bob").status_code == 200
    intervals = []
    for n in nodes:
        records = n.export()
        ann = {
            str(r.payload.get("i"))
            for r in records
            if r.type == RecordType.SEAT_CHECKOUT and str(r.payload.get("c")).startswith("ws-")
        }
        intervals += [x for x in seat_intervals(n.url, records) if x.lease_id in ann]
    # Over every node's verified ledger: ann never held two seats at one instant.
    assert len(intervals) == rounds + 1
    assert most_held_at_once(intervals)[0] == 1


def test_a_seat_reserved_for_a_group_stays_free_for_it_on_every_node(
    start_nodes: StartNodes,
) -> None:
    nodes, tokens = start_nodes(seats=2, options=RESERVE_CFD, keys=((2, "cfd"),))
    taken = 0
    for i in range(8):
        answers = at_once(
            *(lambda n=n, i=i: checkout(n.url, f"out-{n.port}-{i}", user=f"u{i}") for n in nodes)
        )
        codes = sorted(code(r) for r in answers)
        # Two seats, one kept for cfd: exactly one outsider gets a seat, on any node.
        assert codes == ["ok", "policy_denied", "policy_denied"], [r.text for r in answers]
        denied = [r for r in answers if r.status_code != 200]
        assert all("reserved for group 'cfd'" in r.json()["error"]["message"] for r in denied)
        node, r = next((n, r) for n, r in zip(nodes, answers, strict=True) if r.is_success)
        taken += 1
        if i < 7:
            release(node.url, r.json()["lease_id"])
    # The last outsider still holds its seat: the reserved one is still free for cfd.
    assert taken == 8
    r = checkout(nodes[2].url, "cfd-1", token=tokens[2, "cfd"])
    assert r.status_code == 200, r.text
    assert code(checkout(nodes[0].url, "late", user="late")) == "no_seat"


class Waiting(threading.Thread):
    """A checkout with ``wait_seconds`` in the background."""

    def __init__(self, url: str, client_id: str, wait_seconds: int) -> None:
        super().__init__(daemon=True)
        self.url, self.client_id, self.wait_seconds = url, client_id, wait_seconds
        self.answer: httpx.Response | None = None
        self.error: Exception | None = None
        self.done_at = 0.0

    def run(self) -> None:
        try:
            self.answer = checkout(self.url, self.client_id, wait_seconds=self.wait_seconds)
        except httpx.HTTPError as exc:
            self.error = exc
        self.done_at = time.monotonic()


#: The cluster's queue of the feature in etcd (docs/adr/0034).
QUEUE = f"/meterbox/{LICENSE_ID}/queue/{FEATURE}/"


def etcd_of(cluster: EtcdCluster) -> Etcd:
    return Etcd([Endpoint("127.0.0.1", m.client_port) for m in cluster.members], timeout=5)


def queued(etcd: Etcd) -> list[str]:
    """The waiter keys in etcd, oldest first."""
    kvs, _ = etcd.range_at(QUEUE)
    return [kv.key for kv in sorted(kvs, key=lambda kv: kv.create_revision)]


def waiting(url: str, client_id: str, wait_seconds: int, etcd: Etcd) -> Waiting:
    """A waiter started, returned once its key is in the cluster's queue."""
    before = len(queued(etcd))
    w = Waiting(url, client_id, wait_seconds)
    w.start()
    deadline = time.monotonic() + 20
    while len(queued(etcd)) <= before:
        assert w.is_alive(), w.answer.text if w.answer else w.error
        assert time.monotonic() < deadline, f"{client_id} never reached the cluster's queue"
        time.sleep(0.05)
    return w


def test_the_first_to_queue_on_any_node_gets_the_next_seat_freed_on_any_node(
    start_nodes: StartNodes, etcd_cluster: EtcdCluster
) -> None:
    (n1, n2, n3), _ = start_nodes(seats=1)
    etcd = etcd_of(etcd_cluster)
    held = checkout(n3.url, "holder")
    assert held.status_code == 200, held.text
    with kept(n3.url, held.json()["lease_id"]):
        a = waiting(n1.url, "A", 40, etcd)
        # A waits on node 1: a short wait on node 2 ends told one client is ahead.
        short = checkout(n2.url, "B-short", wait_seconds=2)
        assert code(short) == "no_seat", short.text
        assert "1 client(s) wait for a seat" in short.json()["error"]["message"]
        b = waiting(n2.url, "B", 40, etcd)
        now = checkout(n3.url, "C")
        assert code(now) == "no_seat"
        assert "2 client(s) wait for a seat" in now.json()["error"]["message"]
    release(n3.url, held.json()["lease_id"])
    a.join(timeout=15)
    assert a.answer is not None and a.answer.status_code == 200, a.answer or a.error
    time.sleep(1.5)
    assert b.is_alive(), "B took a seat that was A's turn"
    a_lease = a.answer.json()["lease_id"]
    release(n1.url, a_lease)
    b.join(timeout=15)
    assert b.answer is not None and b.answer.status_code == 200, b.answer or b.error
    b_lease = b.answer.json()["lease_id"]
    with kept(n2.url, b_lease):
        d = waiting(n1.url, "D", 60, etcd)
        told = checkout(n3.url, "E")
        assert "1 client(s) wait for a seat" in told.json()["error"]["message"]
        assert len(queued(etcd)) == 1
        n1.kill9()
    # D's node is gone: its waiter key goes with the node's session lease, and the
    # freed seat is not kept for a client nobody serves any more.
    release(n2.url, b_lease)
    deadline = time.monotonic() + 20
    while True:
        r = checkout(n3.url, "E")
        if r.status_code == 200:
            break
        assert "wait for a seat" in r.json()["error"]["message"], r.text
        assert time.monotonic() < deadline, "the dead node's waiter stayed in the queue"
        time.sleep(0.5)
    assert queued(etcd) == []
    assert d.error is not None or d.answer is None or d.answer.status_code != 200
