"""The real app under uvicorn on 127.0.0.1 in a subprocess, over real state and event files."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meterbox.server._sinks import read_frames

TOKEN = "t0ken-for-tests-0123456789"

RUNNER = r"""
import json, sys
from datetime import datetime, timezone
import uvicorn
from meterbox.server import (
    FeaturePolicy, FileEventSink, LicensePolicy, LicenseService, MeterPolicy, ServiceConfig,
    StateStore, build_app,
)

directory, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
issued = datetime(2025, 1, 1, tzinfo=timezone.utc)
policy = LicensePolicy(
    "L1", "acme", "cad", issued,
    features={"cad": FeaturePolicy(seats=2, overdraft=1, lease_seconds=int(sys.argv[4]))},
    meters={"runs": MeterPolicy(limit=10)},
)
store = StateStore(directory + "/state.db")
sink = FileEventSink(directory + "/events.bin")
service = LicenseService.open(store, [policy], sink, settings=ServiceConfig(cull_interval=0.5))

async def export(svc):
    return b"REPORT" + str(svc.ledger_head()[0]).encode()

app = build_app(service, admin_token=token, export_report=export)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
store.close()
sink.close()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, directory: Path, lease_seconds: int = 60) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = directory / "runner.py"
        script.write_text(RUNNER)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(directory),
                str(self.port),
                TOKEN,
                str(lease_seconds),
            ],
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def checkout(c: httpx.Client, client_id: str) -> httpx.Response:
    return c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": client_id})


def test_checkout_up_to_the_limit_then_no_seat(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url) as c:
        leases = [checkout(c, f"host/{i}").json() for i in range(3)]
        assert [x["overdraft"] for x in leases] == [False, False, True]
        denied = checkout(c, "host/9")
        assert denied.status_code == 409
        assert denied.json()["error"]["code"] == "no_seat"
        assert "2 seats and 1 overdraft" in denied.json()["error"]["message"]
        again = checkout(c, "host/0").json()
        assert again["renewed"] and again["lease_id"] == leases[0]["lease_id"]
        beat = c.post("/v1/seats/heartbeat", json={"lease_id": leases[1]["lease_id"]})
        assert beat.status_code == 200 and beat.json()["renewed"]
        assert c.post("/v1/seats/release", json={"lease_id": leases[1]["lease_id"]}).json() == {
            "released": True
        }
        assert c.post("/v1/seats/release", json={"lease_id": leases[1]["lease_id"]}).json() == {
            "released": False
        }
        gone = c.post("/v1/seats/heartbeat", json={"lease_id": leases[1]["lease_id"]})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "lease_not_found"
        view = c.get("/v1/seats").json()["features"][0]
        assert view["in_use"] == 2 and view["denials"] == 1
    frames = list(read_frames(tmp_path / "events.bin"))
    kinds = [kind for _, kind, _, _ in frames]
    assert kinds.count("seat.checkout") == 3 and "seat.denied" in kinds and "seat.release" in kinds
    # The denial names the license whose seat was refused, so it is billed to it.
    denials = [payload for _, kind, payload, _ in frames if kind == "seat.denied"]
    assert [d.get("l") for d in denials] == ["L1"]


def test_usage_is_idempotent_and_refused_past_the_quota(server: Server, tmp_path: Path) -> None:
    with httpx.Client(base_url=server.url) as c:
        body = {"meter": "runs", "amount": 4, "client_id": "a", "idempotency_key": "job-1"}
        first = c.post("/v1/usage", json=body).json()
        replay = c.post("/v1/usage", json=body).json()
        assert not first["replayed"] and replay["replayed"]
        assert replay["seq"] == first["seq"] and replay["used"] == 4
        conflict = c.post("/v1/usage", json={**body, "amount": 5})
        assert conflict.status_code == 409
        assert conflict.json()["error"]["code"] == "idempotency_conflict"
        assert (
            c.post("/v1/usage", json={"meter": "runs", "amount": 6, "client_id": "a"}).json()[
                "remaining"
            ]
            == 0
        )
        over = c.post("/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "a"})
        assert over.status_code == 402 and over.json()["error"]["code"] == "quota_exceeded"
        assert c.get("/v1/usage/balances").json()["meters"][0]["used"] == 10
        bad = c.post("/v1/usage", json={"meter": "runs", "amount": 0, "client_id": "a", "x": 1})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
        big = c.post("/v1/usage", content=b"{" + b" " * (2 << 20) + b"}")
        assert big.status_code == 413 and big.json()["error"]["code"] == "too_large"
    usage = [p for _, kind, p, _ in read_frames(tmp_path / "events.bin") if kind == "usage"]
    assert [p["a"] for p in usage] == [4, 6]


def test_leases_survive_a_restart_and_expire_by_culling(tmp_path: Path) -> None:
    # The one test of culling in real time (the others drive the loop, see
    # tests/unit/test_server_housekeeping.py). The lease outlasts a restart on a busy
    # machine, and the test waits only until the culler (0.5 s here) has removed it.
    s = Server(tmp_path, lease_seconds=8)
    try:
        with httpx.Client(base_url=s.url) as c:
            lease = checkout(c, "host/1").json()
    finally:
        s.stop()
    s = Server(tmp_path, lease_seconds=8)
    try:
        with httpx.Client(base_url=s.url) as c:
            held = c.get("/v1/seats").json()["features"][0]["holders"]
            assert [x["client_id"] for x in held] == ["host/1"]
            assert c.post("/v1/seats/heartbeat", json={"lease_id": lease["lease_id"]}).json()[
                "renewed"
            ]
            deadline = time.monotonic() + 30
            while "meterbox_expiries_total 1" not in c.get("/metrics").text:
                assert time.monotonic() < deadline, "the culler never removed the lease"
                time.sleep(0.1)
            assert c.get("/v1/seats").json()["features"][0]["in_use"] == 0
    finally:
        s.stop()
    kinds = [kind for _, kind, _, _ in read_frames(tmp_path / "events.bin")]
    assert "seat.expire" in kinds
    seqs = [seq for seq, _, _, _ in read_frames(tmp_path / "events.bin")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_admin_needs_the_token(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        none = c.post("/v1/admin/export")
        assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
        assert TOKEN not in none.text
        wrong = c.post("/v1/admin/export", headers={"Authorization": "Bearer " + "x" * 26})
        assert wrong.status_code == 401
        ok = c.post("/v1/admin/export", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.content.startswith(b"REPORT")
        assert ok.headers["content-type"] == "application/octet-stream"


def test_metrics_status_and_openapi_are_served(server: Server) -> None:
    with httpx.Client(base_url=server.url) as c:
        checkout(c, "host/1")
        metrics = c.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert 'meterbox_seats_in_use{feature="cad"} 1' in metrics.text
        status = c.get("/v1/status").json()
        assert status["seats_in_use"] == {"cad": 1} and status["ledger"]["seq"] >= 1
        assert c.get("/v1/licenses").json()["licenses"][0]["license_id"] == "L1"
        spec = c.get("/openapi.json").json()
        usage_op = spec["paths"]["/v1/usage"]["post"]
        assert "422" not in usage_op["responses"] and "400" in usage_op["responses"]
        assert "HTTPBearer" in json.dumps(spec["components"]["securitySchemes"])
        assert "/v1/admin/import" in spec["paths"]
