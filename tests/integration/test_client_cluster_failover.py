"""Client discovery and failover against several real meterbox servers on loopback.

Each node is a real server process (the app ``build_app`` makes, under uvicorn) with
its own state and port; it can be SIGKILLed, or SIGSTOPped like a node cut off.
Two things a clustered node does are stood in for, as files in its state directory
the test writes (the etcd-backed versions live with the cluster seats work):

- ``cluster.json``: the member list its ``GET /v1/cluster`` answers (without the file
  the server's own route answers, as a single server);
- ``unavailable``: while it exists the node answers seat and usage POSTs with the
  contract's ``503 cluster_unavailable`` and ``Retry-After``, as a node that lost
  etcd quorum does.

Each node has one ``cad`` seat with a 2 s lease and an unlimited meter ``runs``.
Clocks: the nodes' and the client's move together, by what the test fires
(:class:`support.timing.ManualWaits`), so lease time passes without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meterbox.client import AsyncClient, Client, RetryConfig
from meterbox.clock import SystemClock
from support.server_proc import ServerProcess as CliServer
from support.server_proc import make_data
from support.timing import ManualSleeps, ManualWaits

NODE_MAIN = textwrap.dedent(
    """
    import json, sys
    from datetime import UTC, datetime
    from pathlib import Path

    import uvicorn
    from fastapi.responses import JSONResponse

    from meterbox.clock import SystemClock
    from meterbox.server._app import build_app
    from meterbox.server._core.policy import FeaturePolicy, LicensePolicy, MeterPolicy
    from meterbox.server._service import LicenseService, ServiceConfig
    from meterbox.server._sinks import FileEventSink
    from meterbox.server._state import StateStore

    state, port = Path(sys.argv[1]), int(sys.argv[2])
    policy = LicensePolicy(
        license_id="lic-cluster-it", customer="ACME", product="solver",
        issued=datetime(2026, 1, 1, tzinfo=UTC),
        features={"cad": FeaturePolicy(seats=1, lease_seconds=2)},
        meters={"runs": MeterPolicy()},
    )
    offset_file = state / "clock-offset"

    def offset():
        return float(offset_file.read_text()) if offset_file.exists() else 0.0

    class OffsetClock(SystemClock):
        def wall_ms(self):
            return super().wall_ms() + int(offset() * 1000)

        def mono_ms(self):
            return super().mono_ms() + int(offset() * 1000)

    service = LicenseService.open(
        StateStore(state / "state.db"), [policy], FileEventSink(state / "events.bin"),
        settings=ServiceConfig(cull_interval=0.2), clock=OffsetClock(),
    )
    app = build_app(service, admin_token="t" * 32)
    view_file = state / "cluster.json"

    @app.middleware("http")
    async def cluster(request, call_next):
        # Read on every request, so the test can change what this node knows; without
        # the file the server's own GET /v1/cluster answers (single mode).
        if request.url.path == "/v1/cluster" and view_file.exists():
            return JSONResponse(json.loads(view_file.read_text()))
        if (
            (state / "unavailable").exists()
            and request.method == "POST"
            and request.url.path.startswith(("/v1/seats/", "/v1/usage"))
        ):
            # The body and header a node without etcd quorum answers (ADR 0024).
            body = {"error": {"code": "cluster_unavailable",
                              "message": "this node lost etcd quorum",
                              "hint": "another node serves"}}
            return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
        return await call_next(request)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)
FAST_RETRY = RetryConfig(base_seconds=0.05, cap_seconds=0.2, max_attempts=None)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One server process with its own state directory and port."""

    def __init__(self, state: Path) -> None:
        state.mkdir()
        self.state = state
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0.0

    def start(self) -> None:
        with (self.state / "node.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", NODE_MAIN, str(self.state), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, (self.state / "node.log").read_text()
            assert time.monotonic() < deadline, "node did not start"
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig is signal.SIGKILL:
            self.proc.wait()
            self.proc = None

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        tmp = self.state / "clock-offset.tmp"
        tmp.write_text(repr(self.offset))
        tmp.replace(self.state / "clock-offset")

    def unavailable(self, on: bool) -> None:
        flag = self.state / "unavailable"
        if on:
            flag.write_text("")
        else:
            flag.unlink(missing_ok=True)

    def get(self, path: str) -> dict[str, object]:
        body = httpx.get(self.url + path, timeout=5).json()
        assert isinstance(body, dict)
        return body

    def used(self) -> int:
        meters = self.get("/v1/usage/balances")["meters"]
        assert isinstance(meters, list)
        return int(next(m["used"] for m in meters if m["meter"] == "runs"))

    def in_use(self) -> int:
        features = self.get("/v1/seats")["features"]
        assert isinstance(features, list)
        return int(next(f["in_use"] for f in features if f["feature"] == "cad"))


class Clocks(SystemClock):
    """The client's clock, moved with the nodes' by every fired wait."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes, self.offset = nodes, 0.0

    def advance(self, seconds: float) -> None:
        self.offset += seconds
        for n in self.nodes:
            n.advance(seconds)

    def wall_ms(self) -> int:
        return super().wall_ms() + int(self.offset * 1000)

    def mono_ms(self) -> int:
        return super().mono_ms() + int(self.offset * 1000)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    started = [Node(tmp_path / f"node{i}") for i in range(3)]
    for n in started:
        n.start()
    try:
        yield started
    finally:
        for n in started:
            if n.proc is not None:
                n.proc.send_signal(signal.SIGCONT)
                n.signal(signal.SIGKILL)


def _view(nodes: list[Node], mode: str = "etcd", dead: tuple[int, ...] = ()) -> None:
    """Every node answers /v1/cluster with all three members (as a clustered node does)."""
    for me in nodes:
        view = {
            "mode": mode,
            "node": me.state.name,
            "quorum": True,
            "members": [
                {"node": n.state.name, "url": n.url, "alive": i not in dead}
                for i, n in enumerate(nodes)
            ],
        }
        (me.state / "cluster.json").write_text(json.dumps(view))


def _client(tmp_path: Path, urls: str | list[str], clock: SystemClock, **kw: object) -> Client:
    return Client(
        urls, spool=tmp_path / "spool.db", client_id="app", timeout=1.0, retry=FAST_RETRY,
        environ={}, clock=clock, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


# ------------------------------------------------------------------ the endpoint
def test_a_single_server_lists_only_itself(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    srv = CliServer(data.data, tmp_path / "server.log")
    srv.start()
    try:
        view = httpx.get(srv.url + "/v1/cluster", timeout=5).json()
        status = httpx.get(srv.url + "/v1/status", timeout=5).json()
    finally:
        srv.stop()
    assert view == {
        "mode": "single",
        "node": view["node"],
        "members": [{"node": view["node"], "url": srv.url, "alive": True}],
        "quorum": True,
    }
    assert view["node"] in json.dumps(status)


# ------------------------------------------------------------------ discovery and usage
def test_discovery_from_one_url_then_failover_on_kill_and_on_503(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b, c = nodes
    _view(nodes)
    clock = Clocks(nodes)
    with _client(tmp_path, a.url, clock, discover=True) as client:
        assert not client.record("runs", 1).spooled
        assert client.urls == (a.url, b.url, c.url)
        assert client.cluster is not None and client.cluster.shares_leases
        a.signal(signal.SIGKILL)
        assert not client.record("runs", 10).spooled
        b.unavailable(True)
        assert not client.record("runs", 100).spooled
    assert (b.used(), c.used()) == (10, 100)


def test_usage_spooled_while_every_member_refuses_is_delivered_once_later(
    nodes: list[Node], tmp_path: Path
) -> None:
    _view(nodes)
    clock = Clocks(nodes)
    with _client(tmp_path, nodes[0].url, clock, discover=True) as client:
        client.discover()
        for n in nodes:
            n.unavailable(True)
        results = [client.record("runs", 5) for _ in range(4)]
        assert all(r.spooled for r in results)
        nodes[2].unavailable(False)
        flushed = client.flush()
        assert flushed.delivered == 4
        assert client.flush().delivered == 0
    assert [n.used() for n in nodes] == [0, 0, 20]


def test_a_bad_cluster_answer_is_skipped_for_the_next_servers(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b, c = nodes
    (a.state / "cluster.json").write_text(
        json.dumps({"mode": "etcd", "node": "x", "quorum": True, "members": [{"url": 3}]})
    )
    with _client(tmp_path, [a.url, b.url], Clocks(nodes), discover=True) as client:
        assert not client.record("runs", 2).spooled
        # A cannot answer (its view does not validate); B's single-server view is kept.
        assert client.cluster is not None
        assert client.cluster.mode == "single"
        assert [m.url for m in client.cluster.members] == [b.url]
        assert client.urls == (a.url, b.url)
        assert c.url not in client.urls


# ------------------------------------------------------------------ seats
def test_a_seat_on_a_cut_off_standalone_server_is_taken_again_only_after_its_term(
    nodes: list[Node], tmp_path: Path
) -> None:
    # Two standalone servers: B never had the lease, so its "not found" proves nothing
    # while A is frozen with the lease still live there.
    a, b, _ = nodes
    clock = Clocks(nodes)
    waits = ManualWaits(on_fire=clock.advance)
    with _client(tmp_path, [a.url, b.url], clock, renew_wait=waits) as client:
        seat = client.seat("cad", reacquire=True).acquire()
        first = seat.lease_id
        a.signal(signal.SIGSTOP)
        waits.fire()  # a heartbeat: A does not answer, B has no such lease
        assert (seat.lease_id, seat.reacquired, b.in_use()) == (first, 0, 0)
        while clock.offset <= 2.0 + 0.7:
            waits.fire()
            if seat.reacquired:
                break
        assert seat.reacquired == 1
        assert seat.lease_id != first
        assert not seat.lost
        assert b.in_use() == 1
        a.signal(signal.SIGCONT)
        # A's lease ran its term before B granted the new one: A culls it.
        deadline = time.monotonic() + 10
        while a.in_use() != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        seat.release()
    assert b.in_use() == 0


def test_a_seat_whose_lease_a_sharing_cluster_calls_gone_is_taken_again_at_once(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b, _ = nodes
    _view(nodes)
    clock = Clocks(nodes)
    waits = ManualWaits(on_fire=clock.advance)
    with _client(tmp_path, a.url, clock, renew_wait=waits, discover=True) as client:
        seat = client.seat("cad", reacquire=True).acquire()
        first = seat.lease_id
        a.signal(signal.SIGKILL)
        waits.fire()
        assert seat.reacquired == 1
        assert seat.lease_id != first
        assert b.in_use() == 1
        assert clock.offset < 2.0  # before the old lease's term
        seat.release()
    assert b.in_use() == 0


def test_without_reacquire_a_lost_seat_is_reported_and_not_taken_again(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b, _ = nodes
    _view(nodes)
    clock = Clocks(nodes)
    waits = ManualWaits(on_fire=clock.advance)
    lost: list[Exception] = []
    with _client(tmp_path, a.url, clock, renew_wait=waits, discover=True) as client:
        seat = client.seat("cad", on_lost=lost.append).acquire()
        a.signal(signal.SIGKILL)
        waits.fire()
        assert seat.lost
        assert len(lost) == 1
        assert b.in_use() == 0


def test_async_client_discovers_fails_over_and_takes_a_gone_seat_again(
    nodes: list[Node], tmp_path: Path
) -> None:
    a, b, c = nodes
    _view(nodes)
    clock = Clocks(nodes)

    async def main() -> None:
        sleeps = ManualSleeps(on_fire=clock.advance)
        async with AsyncClient(
            a.url, spool=tmp_path / "spool.db", client_id="app", timeout=1.0, retry=FAST_RETRY,
            environ={}, clock=clock, renew_sleep=sleeps, discover=True,
        ) as client:  # fmt: skip
            assert not (await client.record("runs", 1)).spooled
            assert client.urls == (a.url, b.url, c.url)
            seat = await client.seat("cad", reacquire=True).acquire()
            first = seat.lease_id
            a.signal(signal.SIGKILL)
            await sleeps.fire()
            assert seat.reacquired == 1
            assert seat.lease_id != first
            assert not (await client.record("runs", 7)).spooled
            await seat.release()

    asyncio.run(main())
    assert (b.used(), b.in_use()) == (7, 0)
