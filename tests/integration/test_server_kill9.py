"""SIGKILL of `meterbox server run` under concurrent load, twenty rounds on one data dir.

Each round starts the real server, lets usage threads (unique idempotency keys) and
seat threads (3 seats + 1 overdraft, more clients than seats) hammer it over
keep-alive connections, and kills it with SIGKILL at a random moment (seeded RNG).
After every restart:

* every acknowledged usage is in the balances (``used`` >= acknowledged sum); once
  every unanswered request is retried with its own idempotency key, ``used`` equals
  the sum of all distinct keys exactly (each counted once, across the crash);
* the exported report verifies with no critical finding, and each acknowledged key
  appears in exactly one USAGE record;
* no seat was granted twice: while the load runs, the clients that certainly hold a
  seat never exceed seats + overdraft; no lease id is ever answered to two clients;
  and once every known lease is released (and every client whose checkout went
  unanswered has checked out again, which renews a lease it was granted unseen, and
  released it), the server shows no seat in use.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from meterbox.ledger import RecordType
from support.server_proc import Data, ServerProcess, make_data

ROUNDS = 20
SEATS, OVERDRAFT = 3, 1
USAGE_THREADS, SEAT_THREADS = 4, 6


@dataclass
class Ledger:
    """What the clients saw, shared by all threads (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    #: client id -> lease id, for grants answered and not yet released (release not sent).
    holding: dict[str, str] = field(default_factory=dict)
    #: client id -> lease id, for grants whose release was not acknowledged.
    unreleased: dict[str, str] = field(default_factory=dict)
    #: clients whose last checkout got no answer (a lease may exist unseen).
    unsure: set[str] = field(default_factory=set)
    lease_owner: dict[str, str] = field(default_factory=dict)
    most_held: int = 0
    violations: list[str] = field(default_factory=list)


def _usage_worker(
    url: str, name: str, rng: random.Random, book: Ledger, stop: threading.Event
) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        i = 0
        while not stop.is_set():
            i += 1
            key, amount = f"{name}-{i}", rng.randint(1, 9)
            with book.lock:
                book.pending[key] = amount
            body = {"meter": "runs", "amount": amount, "client_id": name, "idempotency_key": key}
            try:
                r = c.post("/v1/usage", json=body)
            except httpx.HTTPError:
                return  # the server is gone; the key stays pending
            if r.status_code == 200:
                with book.lock:
                    book.acked[key] = book.pending.pop(key)
            elif r.status_code != 503:
                book.violations.append(f"usage {key}: HTTP {r.status_code} {r.text[:200]}")
                return


def _grant(book: Ledger, client: str, lease_id: str) -> None:
    with book.lock:
        owner = book.lease_owner.setdefault(lease_id, client)
        if owner != client:
            book.violations.append(f"lease {lease_id} answered to {owner} and {client}")
        book.holding[client] = lease_id
        book.unreleased[client] = lease_id
        book.unsure.discard(client)
        # Every counted client was granted before this answer arrived and had not
        # sent its release yet, so all of them held a seat at once on the server.
        held = len(book.holding)
        book.most_held = max(book.most_held, held)
        if held > SEATS + OVERDRAFT:
            book.violations.append(f"{held} seats held at once: {sorted(book.holding)}")


def _seat_worker(url: str, client: str, book: Ledger, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            with book.lock:
                book.unsure.add(client)
            try:
                r = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": client})
            except httpx.HTTPError:
                return
            if r.status_code == 409:
                with book.lock:
                    book.unsure.discard(client)
                continue
            if r.status_code != 200:
                book.violations.append(f"checkout {client}: HTTP {r.status_code} {r.text[:200]}")
                return
            lease_id = r.json()["lease_id"]
            _grant(book, client, lease_id)
            time.sleep(0.005)
            with book.lock:
                book.holding.pop(client, None)
            try:
                r = c.post("/v1/seats/release", json={"lease_id": lease_id})
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                with book.lock:
                    book.unreleased.pop(client, None)


def _settle(url: str, book: Ledger) -> None:
    """Retry every unanswered request; release every lease that may still be held."""
    with httpx.Client(base_url=url, timeout=10) as c:
        for key, amount in sorted(book.pending.items()):
            name = key.rsplit("-", 1)[0]
            body = {"meter": "runs", "amount": amount, "client_id": name, "idempotency_key": key}
            r = c.post("/v1/usage", json=body)
            assert r.status_code == 200, r.text
            book.acked[key] = amount
        book.pending.clear()
        for _client, lease_id in sorted(book.unreleased.items()):
            assert c.post("/v1/seats/release", json={"lease_id": lease_id}).status_code == 200
        book.unreleased.clear()
        book.holding.clear()
        # A checkout granted but never answered renews here, then is released. Those
        # granted may hold every seat while another unsure client was not granted: it
        # gets its seat once they are released, so go round until all are settled.
        waiting = sorted(book.unsure)
        for _ in range(SEATS + OVERDRAFT + 1):
            for client in list(waiting):
                r = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": client})
                if r.status_code == 409:
                    continue
                assert r.status_code == 200, r.text
                lease_id = r.json()["lease_id"]
                _grant(book, client, lease_id)
                book.holding.pop(client)
                assert c.post("/v1/seats/release", json={"lease_id": lease_id}).status_code == 200
                book.unreleased.pop(client)
                waiting.remove(client)
        assert not waiting, f"no seat for {waiting} after every other lease was released"
        book.unsure.clear()


def _used(c: httpx.Client) -> int:
    meters = c.get("/v1/usage/balances").json()["meters"]
    return sum(m["used"] for m in meters if m["meter"] == "runs")


def _check_after_restart(site: Data, url: str, book: Ledger) -> None:
    with httpx.Client(base_url=url, timeout=30) as c:
        # Nothing acknowledged was lost in the crash.
        assert _used(c) >= sum(book.acked.values())
        _settle(url, book)
        # Every key once: retried keys were recorded once whether or not they had
        # reached the ledger before the kill.
        assert _used(c) == sum(book.acked.values())
        features = {f["feature"]: f for f in c.get("/v1/seats").json()["features"]}
        assert features["cad"]["in_use"] == 0, features["cad"]
        report = c.post(
            "/v1/admin/export", headers={"Authorization": f"Bearer {site.token}"}
        ).content
    records, result = site.verify(report)
    assert not result.critical, result.findings
    keys = Counter(r.payload.get("k") for r in records if r.type == RecordType.USAGE)
    assert all(keys[k] == 1 for k in book.acked), [k for k in book.acked if keys[k] != 1]
    assert sum(r.payload["a"] for r in records if r.type == RecordType.USAGE) == sum(
        book.acked.values()
    )


#: Acknowledged usage records each round must reach before its kill -9.
ACKS_PER_ROUND = 20


def _wait_for_acks(book: Ledger, target: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(book.acked) < target:
        assert time.monotonic() < deadline, f"only {len(book.acked)} of {target} acknowledged"
        time.sleep(0.02)


def test_twenty_sigkills_under_load_lose_nothing_and_grant_no_seat_twice(tmp_path: Path) -> None:
    site = make_data(tmp_path, seats=SEATS, overdraft=OVERDRAFT)
    server = ServerProcess(site.data, tmp_path / "server.log")
    rng = random.Random(20260310)
    book = Ledger()
    try:
        for rnd in range(ROUNDS):
            server.start()
            if rnd:
                _check_after_restart(site, server.url, book)
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=_usage_worker,
                    args=(server.url, f"r{rnd}u{t}", random.Random(rng.random()), book, stop),
                )
                for t in range(USAGE_THREADS)
            ] + [
                threading.Thread(target=_seat_worker, args=(server.url, f"seat-{t}", book, stop))
                for t in range(SEAT_THREADS)
            ]
            for t in threads:
                t.start()
            # Kill only once the round has really loaded the server (a loaded machine may
            # take longer to get there), then at a random moment after that.
            _wait_for_acks(book, len(book.acked) + ACKS_PER_ROUND)
            time.sleep(rng.uniform(0.0, 0.5))
            server.kill9()
            stop.set()
            for t in threads:
                t.join(timeout=15)
                assert not t.is_alive()
            assert not book.violations, book.violations
        server.start()
        _check_after_restart(site, server.url, book)
        assert not book.violations, book.violations
    finally:
        server.stop()
    # The load was real: many usage records and contended seats in every run.
    assert len(book.acked) >= ROUNDS * ACKS_PER_ROUND
    assert book.most_held >= SEATS
