"""The claim's guards mean on a real etcd what ADR 0034 says they mean.

``unchanged_since`` fails once a key under the prefix is created or changed after the
read and passes a deletion; ``none_under`` holds on an empty prefix only;
``none_older_under`` holds when every key under the prefix is as young as the given
revision or younger. Each guard is tried against a real three-member etcd.
"""

from __future__ import annotations

from meterbox.server._cluster._etcd import (
    Etcd,
    none_older_under,
    none_under,
    unchanged_since,
)
from meterbox.server._cluster._url import Endpoint
from support.etcd import EtcdCluster

SLOTS = "/meterbox/lic/seats/cad/"
QUEUE = "/meterbox/lic/queue/cad/"


def etcd(cluster: EtcdCluster) -> Etcd:
    return Etcd([Endpoint("127.0.0.1", m.client_port) for m in cluster.members], timeout=5)


def test_a_slot_created_or_changed_after_the_read_fails_the_claim(
    etcd_cluster: EtcdCluster,
) -> None:
    e = etcd(etcd_cluster)
    assert e.create_guarded(SLOTS + "regular/0", b"a", 0, ())
    _, read = e.range_at(SLOTS)
    # Another node takes a slot after the read: the claim on the old read fails.
    assert e.create_guarded(SLOTS + "regular/1", b"b", 0, ())
    assert not e.create_guarded(SLOTS + "regular/2", b"c", 0, [unchanged_since(SLOTS, read)])
    # A value rewritten in place fails it too.
    _, read = e.range_at(SLOTS)
    e.put(SLOTS + "regular/0", b"a2")
    assert not e.create_guarded(SLOTS + "regular/2", b"c", 0, [unchanged_since(SLOTS, read)])
    # A release (deletion) only frees room: the claim on the read before it passes.
    _, read = e.range_at(SLOTS)
    e.delete(SLOTS + "regular/1")
    assert e.create_guarded(SLOTS + "regular/2", b"c", 0, [unchanged_since(SLOTS, read)])
    kvs, _ = e.range_at(SLOTS)
    assert sorted(kv.key for kv in kvs) == [SLOTS + "regular/0", SLOTS + "regular/2"]
    # An existing slot key is never overwritten, whatever the guards.
    assert not e.create_guarded(SLOTS + "regular/0", b"x", 0, ())


def test_the_queue_guards_let_only_the_oldest_waiter_or_anyone_while_none_waits(
    etcd_cluster: EtcdCluster,
) -> None:
    e = etcd(etcd_cluster)
    assert e.create_guarded(SLOTS + "regular/0", b"free-for-all", 0, [none_under(QUEUE)])
    a = e.create_guarded(QUEUE + "n1/a", b"A", 0, ())
    b = e.create_guarded(QUEUE + "n2/b", b"B", 0, ())
    assert 0 < a < b
    kvs, _ = e.range_at(QUEUE)
    assert {kv.key: kv.create_revision for kv in kvs} == {QUEUE + "n1/a": a, QUEUE + "n2/b": b}
    # Somebody waits: a request that does not wait gets no slot.
    assert not e.create_guarded(SLOTS + "regular/1", b"C", 0, [none_under(QUEUE)])
    # B is not the oldest; A is.
    assert not e.create_guarded(SLOTS + "regular/1", b"B", 0, [none_older_under(QUEUE, b)])
    assert e.create_guarded(SLOTS + "regular/1", b"A", 0, [none_older_under(QUEUE, a)])
    # A leaves the queue: now B is the oldest.
    e.delete(QUEUE + "n1/a")
    assert e.create_guarded(SLOTS + "regular/2", b"B", 0, [none_older_under(QUEUE, b)])
    e.delete(QUEUE + "n2/b")
    assert e.create_guarded(SLOTS + "regular/3", b"D", 0, [none_under(QUEUE)])
