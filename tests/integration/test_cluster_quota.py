"""Quota blocks against a real three-member etcd cluster on loopback (docs/adr/0025).

Three "nodes" are :class:`ClusterQuota` objects (in this process, or in their own
processes via ``support.quota_node``), each with its own real ledger and etcd lease.
Every count checked here is read back from the nodes' ledgers, not from the objects.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from meterbox.clock import SystemClock
from meterbox.errors import QuotaExceeded
from meterbox.ledger import (
    Appended,
    LedgerWriter,
    RecordType,
    ReportVerifier,
    export_report,
    parse_payload,
)
from meterbox.ledger.records import (
    PAYLOAD_TYPES,
    QuotaBlockReturned,
    QuotaBlockTaken,
    RecordPayload,
    Usage,
)
from meterbox.server._cluster import Etcd, parse_cluster_url
from meterbox.server._cluster._quota import (
    ClusterQuota,
    EtcdNodeLease,
    QuotaConfig,
    QuotaStore,
)
from meterbox.server._cluster._quota_core import NodeBook, Pool
from meterbox.server._errors import ClusterUnavailableError
from support.etcd import EtcdCluster
from support.ledger import VENDOR, VENDOR_ID

LICENSE = "lic-1"
METER = "runs"
POOL = (LICENSE, METER, "total")
TESTS = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    name: str
    path: Path
    writer: LedgerWriter
    lease: EtcdNodeLease
    quota: ClusterQuota
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.lease.stop()
            self.writer.close()


def start_node(
    cluster: EtcdCluster,
    base: Path,
    name: str,
    *,
    block_size: int = 16,
    book: NodeBook | None = None,
    writer: LedgerWriter | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Node:
    etcd = QuotaStore(Etcd(parse_cluster_url(cluster.cluster_url), timeout=1.5))
    lease = EtcdNodeLease(etcd, ttl_s=3).start()
    path = base / name
    if writer is None:
        writer = LedgerWriter.create(
            path,
            vendor_ledger_key=VENDOR.public_key(),
            vendor_key_id=VENDOR_ID,
            clock=SystemClock(),
        )
    w = writer

    def submit(record: RecordPayload) -> Future[Appended]:
        return w.submit(record.record_type, record.to_map())

    quota = ClusterQuota(
        etcd,
        node=name,
        lease=lease,
        submit=submit,
        license_ids=[LICENSE],
        config=QuotaConfig(block_size=block_size, members=3),
        book=book,
        clock=clock,
    )
    return Node(name, path, writer, lease, quota)


def ledger_records(path: Path) -> list[RecordPayload]:
    """Every typed record of a closed ledger, read as the vendor reads it: from a report."""
    writer = LedgerWriter.open(path, clock=SystemClock())
    try:
        buf = io.BytesIO()
        export_report(writer, buf, clock=SystemClock(), licenses=[b"license"], acked=None)
    finally:
        writer.close()
    out: list[RecordPayload] = []
    for r, _ in ReportVerifier({VENDOR_ID: VENDOR}).records(io.BytesIO(buf.getvalue())):
        if RecordType(r.type) in PAYLOAD_TYPES:
            out.append(parse_payload(RecordType(r.type), r.payload))
    return out


def unflagged_units(records: list[RecordPayload]) -> int:
    return sum(r.amount for r in records if type(r) is Usage and r.meter == METER and not r.flagged)


def pool_value(node: Node) -> Pool:
    found = node.quota.read_pool(POOL)
    assert found is not None
    return found[0]


def charge(node: Node, amount: int = 1, *, limit: int, over: str = "refuse") -> bool:
    record = Usage(meter=METER, amount=amount, license_id=LICENSE, client_id=node.name)
    try:
        node.quota.charge(POOL, limit=limit, over_limit=over, record=record).appended.result()
    except QuotaExceeded:
        return False
    return True


@pytest.fixture
def nodes(etcd_cluster: EtcdCluster, tmp_path: Path) -> Iterator[list[Node]]:
    started = [start_node(etcd_cluster, tmp_path, f"node{i}") for i in range(3)]
    try:
        yield started
    finally:
        for n in started:
            n.close()


T = TypeVar("T")


def _through_election(call: Callable[[], T], within_s: float = 15.0) -> T:
    """``call()``, retried while the cluster is briefly unavailable (an etcd election)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return call()
        except ClusterUnavailableError:
            assert time.monotonic() < deadline, "the cluster stayed unavailable"
            time.sleep(0.2)


def test_concurrent_usage_on_three_nodes_never_grants_more_than_the_limit(
    etcd_cluster: EtcdCluster, nodes: list[Node]
) -> None:
    limit = 600
    granted = [0] * 12
    lock = threading.Lock()
    errors: list[BaseException] = []
    killed = threading.Event()

    def worker(i: int) -> None:
        node = nodes[i % 3]
        rnd = random.Random(i)
        refusals = 0
        try:
            while refusals < 5:
                amount = rnd.randint(1, 4)
                try:
                    ok = charge(node, amount, limit=limit)
                except ClusterUnavailableError:
                    continue  # an etcd member went away mid-request: the client retries
                if ok:
                    granted[i] += amount
                    refusals = 0
                else:
                    refusals += 1
                with lock:
                    if sum(granted) > limit // 2 and not killed.is_set():
                        killed.set()
                        etcd_cluster.kill(0)  # one etcd member dies under load
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert killed.is_set()
    assert sum(granted) <= limit
    # Whatever blocks are still held: give them back, then drain from one node. The
    # killed member may have led: until the others elect a leader and the node's lease
    # is refreshed again, a call answers ClusterUnavailableError and is retried, as a
    # client would.
    for n in nodes:
        _through_election(n.quota.give_back)
    while _through_election(lambda: charge(nodes[0], 1, limit=limit)):
        granted[0] += 1
    for n in nodes:
        _through_election(n.quota.give_back)
    value = pool_value(nodes[0])
    assert value.blocks == ()
    assert value.consumed == sum(granted) == limit
    for n in nodes:
        n.close()
    from_ledgers = sum(unflagged_units(ledger_records(n.path)) for n in nodes)
    assert from_ledgers == limit


def _run_node(cluster: EtcdCluster, ledger: Path, name: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "support.quota_node",
            "--endpoints",
            ",".join(cluster.endpoints),
            "--ledger",
            str(ledger),
            "--node",
            name,
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_three_node_processes_share_the_limit_exactly(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    limit = 300
    procs = [
        _run_node(
            etcd_cluster,
            tmp_path / f"p{i}",
            f"p{i}",
            "--limit",
            str(limit),
            "--units",
            "200",
            "--block-size",
            "8",
        )
        for i in range(3)
    ]
    results = []
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    granted = sum(r["granted"] for r in results)
    # 600 units asked for, 300 there: never more, and the blocks given back at exit
    # leave nothing stranded that a request could not reach.
    assert granted <= limit
    from_ledgers = sum(unflagged_units(ledger_records(tmp_path / f"p{i}")) for i in range(3))
    assert from_ledgers == granted
    etcd = QuotaStore(Etcd(parse_cluster_url(etcd_cluster.cluster_url)))
    raw = etcd.get(ClusterQuota.pool_key(POOL))
    assert raw is not None
    value = Pool.from_bytes(raw[0])
    assert value.blocks == () and value.consumed == granted
    assert sum(r["denied"] for r in results) == 600 - granted


def test_a_node_killed_holding_a_block_is_reconciled_from_its_ledger(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    limit = 100
    dead_path = tmp_path / "dead"
    proc = _run_node(
        etcd_cluster,
        dead_path,
        "dead",
        "--limit",
        str(limit),
        "--units",
        "10",
        "--block-size",
        "16",
        "--hold",
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert json.loads(line) == {"granted": 10, "denied": 0}
    etcd = QuotaStore(Etcd(parse_cluster_url(etcd_cluster.cluster_url)))
    raw = etcd.get(ClusterQuota.pool_key(POOL))
    assert raw is not None
    (block,) = Pool.from_bytes(raw[0]).held_by("dead")
    live = ClusterQuota.live_key(POOL, block.block_id)
    assert etcd.get(live) is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)

    # Its lease runs out: the block's live key goes with it.
    deadline = time.monotonic() + 15
    while etcd.get(live) is not None:
        assert time.monotonic() < deadline, "the dead node's block never expired"
        time.sleep(0.2)

    others = [start_node(etcd_cluster, tmp_path, f"live{i}") for i in range(2)]
    try:
        got = 0
        for n in others:
            while charge(n, 1, limit=limit):
                got += 1
        # The rest of the pool was usable; the dead node's block stays counted, since
        # only its ledger knows how much of it was granted.
        assert got == limit - block.size
        for n in others:
            n.quota.give_back()

        # The node comes back: its ledger says 10 of the 16 were granted.
        writer = LedgerWriter.open(dead_path, clock=SystemClock(), replay_after=0)
        book = NodeBook.fold(
            parse_payload(RecordType(r.type), r.payload)
            for r in writer.replayed
            if r.type not in (RecordType.EPOCH, RecordType.STATE)
        )
        back = start_node(etcd_cluster, tmp_path, "dead", book=book, writer=writer)
        try:
            (settled,) = back.quota.reconcile()
            assert (settled.used, settled.block.size - settled.used) == (10, block.size - 10)
            assert settled.record is not None and settled.record.reason == "expired"
            value = pool_value(back)
            assert value.blocks == () and value.consumed == limit - (block.size - 10)
            # The unused rest is usable again, by anyone.
            while charge(others[0], 1, limit=limit):
                got += 1
            others[0].quota.give_back()
            assert got + 10 == limit
        finally:
            back.close()
    finally:
        for n in others:
            n.close()
    dead_records = ledger_records(dead_path)
    returned = [r for r in dead_records if isinstance(r, QuotaBlockReturned)]
    assert [(r.block_id, r.used, r.returned, r.reason) for r in returned] == [
        (block.block_id, 10, block.size - 10, "expired")
    ]
    assert [r.block_id for r in dead_records if isinstance(r, QuotaBlockTaken)] == [block.block_id]
    total = unflagged_units(dead_records) + sum(
        unflagged_units(ledger_records(tmp_path / f"live{i}")) for i in range(2)
    )
    assert total == limit


def test_a_topup_imported_on_two_nodes_raises_the_shared_limit_once(nodes: list[Node]) -> None:
    limit = 40
    answers: list[bool] = []

    def imp(n: Node) -> None:
        answers.append(n.quota.topup(POOL, limit=limit, topup_id="T-1", amount=25))

    threads = [threading.Thread(target=imp, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [False, False, True]
    assert pool_value(nodes[0]).topups == 25
    got = 0
    for n in nodes:
        while charge(n, 1, limit=limit):
            got += 1
        n.quota.give_back()
    got += sum(1 for _ in iter(lambda: charge(nodes[0], 1, limit=limit), False))
    assert got == limit + 25


def test_allow_meters_grant_past_the_limit_flagged_and_account_for_every_unit(
    nodes: list[Node],
) -> None:
    limit = 50
    asked = 0
    rnd = random.Random(5)
    for _ in range(120):
        n = rnd.choice(nodes)
        assert charge(n, 1, limit=limit, over="allow")
        asked += 1
    for n in nodes:
        n.quota.give_back()
    value = pool_value(nodes[0])
    for n in nodes:
        n.close()
    records = [r for n in nodes for r in ledger_records(n.path)]
    usage = [r for r in records if type(r) is Usage]
    assert sum(r.amount for r in usage) == asked  # billing from the ledgers: every unit
    unflagged = sum(r.amount for r in usage if not r.flagged)
    assert unflagged == value.consumed <= limit
    assert sum(r.amount for r in usage if r.flagged) == asked - unflagged


def test_nodes_that_disagree_about_the_limit_are_refused(nodes: list[Node]) -> None:
    assert charge(nodes[0], 1, limit=10)
    with pytest.raises(Exception, match="disagree about the limit") as info:
        charge(nodes[1], 1, limit=11)
    assert "same license" in str(info.value)


def test_a_node_whose_lease_was_lost_settles_its_blocks_before_granting_again(
    nodes: list[Node],
) -> None:
    node = nodes[0]
    for _ in range(5):
        assert charge(node, 1, limit=100)
    (block,) = pool_value(node).held_by(node.name)
    old_lease = node.lease.lease_id
    # etcd forgets the lease (as after a partition longer than its TTL): the block's
    # live key goes with it, and the next keepalive finds the lease gone.
    node.quota._etcd.post("kv/lease/revoke", {"ID": old_lease})
    assert node.quota._etcd.get(ClusterQuota.live_key(POOL, block.block_id)) is None
    node.lease.refresh()
    assert node.lease.lease_id != old_lease and node.lease.generation == 1
    assert charge(node, 1, limit=100)
    value = pool_value(node)
    assert value.consumed == 5
    (new_block,) = value.held_by(node.name)
    assert new_block.block_id != block.block_id
    node.close()
    returned = [r for r in ledger_records(node.path) if isinstance(r, QuotaBlockReturned)]
    assert [(r.block_id, r.used, r.reason) for r in returned] == [(block.block_id, 5, "expired")]


def test_a_node_whose_lease_is_not_known_alive_grants_nothing(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    now = [0.0]
    store = QuotaStore(Etcd(parse_cluster_url(etcd_cluster.cluster_url)))
    lease = EtcdNodeLease(store, ttl_s=3, clock=lambda: now[0])
    quota = ClusterQuota(
        store, node="n", lease=lease, submit=lambda r: Future(), license_ids=[LICENSE]
    )
    record = Usage(meter=METER, amount=1, license_id=LICENSE)
    quota.charge(POOL, limit=10, over_limit="refuse", record=record)
    now[0] = 2.5  # no keepalive answered for 2.5 s of a 3 s lease
    with pytest.raises(ClusterUnavailableError, match="lease is not known to be alive"):
        quota.charge(POOL, limit=10, over_limit="refuse", record=record)
    lease.refresh()
    quota.charge(POOL, limit=10, over_limit="refuse", record=record)


def test_a_new_period_settles_the_last_one_s_blocks_first(nodes: list[Node]) -> None:
    node = nodes[0]
    november, december = (LICENSE, METER, "2026-11"), (LICENSE, METER, "2026-12")
    for pool in (november, november, december):
        rec = Usage(meter=METER, amount=1, license_id=LICENSE)
        node.quota.charge(pool, limit=100, over_limit="refuse", record=rec).appended.result()
    old = node.quota.read_pool(november)
    new = node.quota.read_pool(december)
    assert old is not None and new is not None
    assert (old[0].consumed, old[0].blocks) == (2, ())
    assert new[0].consumed == 0 and len(new[0].held_by(node.name)) == 1
    node.close()
    records = ledger_records(node.path)
    assert [(r.period, r.used, r.reason) for r in records if isinstance(r, QuotaBlockReturned)] == [
        ("2026-11", 2, "unused")
    ]
    # The ledger folds to the same book: December's block open with 1 used.
    book = NodeBook.fold(records)
    assert [(b.pool, b.used) for b in book.open.values()] == [(december, 1)]


def test_a_block_nothing_drew_on_goes_back_and_sooner_near_the_limit(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    now = [0.0]
    node = start_node(etcd_cluster, tmp_path, "idle", clock=lambda: now[0])
    try:
        assert charge(node, 3, limit=1000)
        (block,) = pool_value(node).held_by(node.name)
        now[0] = 29.0
        assert not node.quota.give_back_idle()  # 29 s of the default 30
        assert charge(node, 1, limit=1000)  # a draw restarts the block's clock
        now[0] = 58.0
        assert not node.quota.give_back_idle()
        now[0] = 59.0
        assert node.quota.held() == {(LICENSE, METER): (block.size, block.size - 4)}
        assert node.quota.give_back_idle()
        assert not node.quota.give_back_idle()
        value = pool_value(node)
        assert (value.consumed, value.blocks) == (4, ())
        assert node.quota.held() == {}
        assert node.quota._etcd.get(ClusterQuota.live_key(POOL, block.block_id)) is None
        # A pool left with less than a block free: its block goes back after 5 s.
        jobs = (LICENSE, "jobs", "total")
        rec = Usage(meter="jobs", amount=1, license_id=LICENSE)
        node.quota.charge(jobs, limit=5, over_limit="refuse", record=rec).appended.result()
        found = node.quota.read_pool(jobs)
        assert found is not None
        (small,) = found[0].held_by(node.name)
        now[0] = 63.9
        assert not node.quota.give_back_idle()
        now[0] = 64.0
        assert node.quota.give_back_idle()
        assert node.quota.idle_returns == 2
    finally:
        node.close()
    returned = [r for r in ledger_records(node.path) if isinstance(r, QuotaBlockReturned)]
    assert [(r.block_id, r.used, r.returned, r.reason) for r in returned] == [
        (block.block_id, 4, block.size - 4, "unused"),
        (small.block_id, 1, small.size - 1, "unused"),
    ]
