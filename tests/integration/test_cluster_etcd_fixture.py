"""The three-member etcd test cluster is real: writes replicate, 2/3 keeps quorum, 1/3 does not."""

from __future__ import annotations

import time

import etcd3gw
import pytest
from etcd3gw import exceptions as etcd_exceptions

from support.etcd import EtcdCluster


def _client(cluster: EtcdCluster, index: int, timeout: float = 2.0) -> etcd3gw.Etcd3Client:
    m = cluster.members[index]
    return etcd3gw.Etcd3Client(host="127.0.0.1", port=m.client_port, timeout=timeout)


def test_a_write_on_one_member_reads_back_on_another(etcd_cluster: EtcdCluster) -> None:
    assert _client(etcd_cluster, 0).put("/smoke/a", "1")
    assert _client(etcd_cluster, 2).get("/smoke/a") == [b"1"]
    assert len(_client(etcd_cluster, 1).members()) == 3


#: etcd's election timeout in the test cluster is 1 s; a new leader is elected well within.
ELECTION_S = 10.0


def test_two_of_three_members_still_commit(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.kill(0)
    # If member 0 led, the other two elect a new leader first; until then a write is
    # refused (503 "leader changed" / "no leader"). Two members must commit after that.
    deadline = time.monotonic() + ELECTION_S
    while True:
        try:
            assert _client(etcd_cluster, 1, timeout=10).put("/smoke/b", "2")
            break
        except etcd_exceptions.Etcd3Exception:
            assert time.monotonic() < deadline, "two of three members never committed"
            time.sleep(0.2)
    etcd_cluster.restart(0)
    assert _client(etcd_cluster, 0).get("/smoke/b") == [b"2"]


def test_one_of_three_members_cannot_commit(etcd_cluster: EtcdCluster) -> None:
    etcd_cluster.pause(0)
    etcd_cluster.pause(1)
    with pytest.raises(etcd_exceptions.Etcd3Exception):
        _client(etcd_cluster, 2, timeout=3).put("/smoke/c", "3")
    etcd_cluster.resume(0)
    etcd_cluster.resume(1)
    etcd_cluster.wait_healthy(etcd_cluster.members)
    assert _client(etcd_cluster, 2, timeout=10).put("/smoke/c", "3")
