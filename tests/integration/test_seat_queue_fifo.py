"""Queued checkouts on the real server: FIFO per feature, the first freed seat to the first
waiter, positions visible, a waiter that disappears leaves the queue, one denial at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import Data, ServerProcess, make_data

from meterbox.client import Client
from meterbox.client._core import Lease
from meterbox.client.errors import NoSeatAvailable


@pytest.fixture
def site(tmp_path: Path) -> Data:
    return make_data(tmp_path, seats=1, overdraft=0)


@pytest.fixture
def server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(site.data, tmp_path / "server.log")
    s.start()
    yield s
    s.stop()


def queue(url: str) -> list[str]:
    feature = httpx.get(f"{url}/v1/seats").json()["features"][0]
    return [q["client_id"] for q in feature["queue"]]


def until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_waiters_get_freed_seats_in_arrival_order(server: ServerProcess, tmp_path: Path) -> None:
    got: dict[str, Lease] = {}
    order: list[str] = []

    def wait_for_seat(name: str) -> None:
        with Client(server.url, client_id=name, spool=tmp_path / f"{name}.db") as c:
            lease = c.checkout("cad", wait=60)
            got[name] = lease
            order.append(name)

    with Client(server.url, client_id="holder", spool=tmp_path / "h.db") as holder:
        first = holder.checkout("cad")
        threads = []
        for name in ("b", "c", "d"):
            t = threading.Thread(target=wait_for_seat, args=(name,))
            t.start()
            threads.append(t)
            until(lambda n=name: n in queue(server.url), f"{name} never queued")
        assert queue(server.url) == ["b", "c", "d"]
        # A checkout that does not wait cannot jump the queue.
        with Client(server.url, client_id="e", spool=tmp_path / "e.db") as e:
            with pytest.raises(NoSeatAvailable, match="3 client"):
                e.checkout("cad")
        holder.release(first.lease_id)
        until(lambda: "b" in got, "b never got the freed seat")
        assert queue(server.url) == ["c", "d"]
        for name, nxt in (("b", "c"), ("c", "d")):
            with Client(server.url, client_id=name, spool=tmp_path / f"{name}2.db") as c:
                c.release(got[name].lease_id)
            until(lambda n=nxt: n in got, f"{nxt} never got the seat")
        for t in threads:
            t.join(timeout=30)
    assert order == ["b", "c", "d"]
    assert queue(server.url) == []


def test_a_waiter_that_disappears_leaves_the_queue_and_a_timeout_is_one_denial(
    site: Data, server: ServerProcess, tmp_path: Path
) -> None:
    with Client(server.url, client_id="holder", spool=tmp_path / "h.db") as holder:
        holder.checkout("cad")
        body = {"feature": "cad", "client_id": "quitter", "wait_seconds": 600}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/seats/checkout", json=body, timeout=1.5)
        until(lambda: queue(server.url) == [], "the disconnected waiter stayed queued")
        before = httpx.get(f"{server.url}/v1/seats").json()["features"][0]["denials"]
        started = time.monotonic()
        with Client(server.url, client_id="patient", spool=tmp_path / "p.db") as p:
            with pytest.raises(NoSeatAvailable):
                p.checkout("cad", wait=2)
        assert time.monotonic() - started >= 1.9
        after = httpx.get(f"{server.url}/v1/seats").json()["features"][0]["denials"]
        # The quitter and the patient waiter are one denial each, not one per retry.
        assert after - before == 1
