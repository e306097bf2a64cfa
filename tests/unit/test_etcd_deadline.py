"""An operation's time budget bounds every etcd call in it, whatever the members do.

The members here are real TCP listeners on loopback that accept a request and never
answer (a member cut off from its quorum behaves so): without a budget a call waits
one timeout per member; with one, the call ends when the budget does, and a call that
starts after the budget sends no request at all.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from meterbox.server._cluster._etcd import Etcd, EtcdDown
from meterbox.server._cluster._url import Endpoint


class Silent:
    """A listener that reads requests and never answers; counts connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def close(self) -> None:
        self._stop = True
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def members() -> Iterator[list[Silent]]:
    out = [Silent() for _ in range(3)]
    yield out
    for m in out:
        m.close()


def _etcd(members: list[Silent], timeout: float) -> Etcd:
    return Etcd([Endpoint("127.0.0.1", m.port) for m in members], timeout=timeout)


def test_without_a_budget_a_call_waits_one_timeout_per_member(members: list[Silent]) -> None:
    etcd = _etcd(members, timeout=0.4)
    began = time.monotonic()
    with pytest.raises(EtcdDown):
        etcd.call("kv/range", {"key": "eA=="})
    assert time.monotonic() - began >= 3 * 0.4
    assert [m.accepted for m in members] == [1, 1, 1]


def test_a_budget_ends_the_call_when_it_runs_out(members: list[Silent]) -> None:
    etcd = _etcd(members, timeout=0.4)
    began = time.monotonic()
    with etcd.deadline(0.5), pytest.raises(EtcdDown):
        etcd.call("kv/range", {"key": "eA=="})
    took = time.monotonic() - began
    # One full timeout on the first member, what is left on the second, none on the third.
    assert took < 3 * 0.4, took
    assert members[2].accepted == 0


def test_a_call_after_the_budget_sends_nothing(members: list[Silent]) -> None:
    etcd = _etcd(members, timeout=0.4)
    with etcd.deadline(0.0), pytest.raises(EtcdDown, match="time budget"):
        etcd.call("kv/range", {"key": "eA=="})
    assert [m.accepted for m in members] == [0, 0, 0]


def test_a_nested_budget_keeps_the_earlier_deadline_and_is_undone(members: list[Silent]) -> None:
    etcd = _etcd(members, timeout=0.4)
    with etcd.deadline(0.0):
        with etcd.deadline(60), pytest.raises(EtcdDown, match="time budget"):
            etcd.call("kv/range", {"key": "eA=="})
    assert [m.accepted for m in members] == [0, 0, 0]
    # Outside every block, the call is bounded by the timeouts only again.
    with pytest.raises(EtcdDown):
        etcd.call("kv/range", {"key": "eA=="})
    assert [m.accepted for m in members] == [1, 1, 1]
