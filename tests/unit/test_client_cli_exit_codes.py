"""`meterbox client ...` output and exit codes (0 ok, 1 denied, 2 bad input, 5 unreachable)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from meterbox.cli import app
from meterbox.client import Client
from meterbox.client import cli as client_cli

runner = CliRunner()


def respond(status: int, body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, json=body)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
def serve(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Callable[[httpx.Request], httpx.Response]], None]:
    def install(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        def make(
            urls: list[str] | None,
            spool: Path | None,
            client_id: str | None,
            api_key: str | None,
        ) -> Client:
            return Client(
                urls or None,
                spool=spool,
                client_id=client_id,
                api_key=api_key,
                transport=httpx.MockTransport(handler),
            )

        monkeypatch.setattr(client_cli, "make_client", make)

    return install


LEASE = {
    "lease_id": "L7",
    "feature": "cad",
    "client_id": "c",
    "expires_at": "2026-01-01T00:01:00Z",
    "lease_seconds": 60,
    "overdraft": False,
    "renewed": False,
}


def test_checkout_prints_the_lease_id_alone(serve: Callable[..., None]) -> None:
    serve(respond(200, LEASE))
    result = runner.invoke(app, ["client", "checkout", "cad", "--url", "http://s.test"])
    assert result.exit_code == 0
    assert result.stdout.strip() == "L7"


def test_checkout_denied_exits_1_with_the_server_message(serve: Callable[..., None]) -> None:
    serve(respond(409, {"error": {"code": "no_seat", "message": "No seat is free for 'cad'"}}))
    result = runner.invoke(app, ["client", "checkout", "cad", "--url", "http://s.test"])
    assert result.exit_code == 1
    assert "No seat is free" in result.stderr


def test_checkout_with_server_down_exits_5(serve: Callable[..., None]) -> None:
    serve(refuse)
    result = runner.invoke(app, ["client", "checkout", "cad", "--url", "http://s.test"])
    assert result.exit_code == 5
    assert "No meterbox server answered" in result.stderr


def test_record_while_down_is_spooled_and_exits_0(
    serve: Callable[..., None], tmp_path: Path
) -> None:
    serve(refuse)
    args = [
        "client",
        "record",
        "runs",
        "4",
        "--url",
        "http://s.test",
        "--spool",
        str(tmp_path / "s.db"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["spooled"] is True
    assert "spooled" in result.stderr
    # flush cannot deliver either: events remain, exit 5.
    flush = runner.invoke(
        app, ["client", "flush", "--url", "http://s.test", "--spool", str(tmp_path / "s.db")]
    )
    assert flush.exit_code == 5
    assert json.loads(flush.stdout)["pending"] == 1


def test_record_bad_amount_exits_2(serve: Callable[..., None], tmp_path: Path) -> None:
    serve(refuse)
    spool = ["--spool", str(tmp_path / "s.db"), "--url", "http://s.test"]
    assert runner.invoke(app, ["client", "record", "runs", "0", *spool]).exit_code == 2
    assert runner.invoke(app, ["client", "record", "runs", "abc", *spool]).exit_code == 2


def test_quota_exceeded_exits_1(serve: Callable[..., None], tmp_path: Path) -> None:
    serve(respond(402, {"error": {"code": "quota_exceeded", "message": "quota used up"}}))
    args = ["client", "record", "runs", "--url", "http://s.test", "--spool", str(tmp_path / "s.db")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "quota used up" in result.stderr


def test_missing_url_exits_2_and_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METERBOX_URL", raising=False)
    result = runner.invoke(app, ["client", "release", "L1"])
    assert result.exit_code == 2
    assert "METERBOX_URL" in result.stderr


def test_url_from_environment_is_used(
    serve: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"released": True})

    serve(handler)
    monkeypatch.setenv("METERBOX_URL", "http://env.test")
    result = runner.invoke(app, ["client", "release", "L1"])
    assert result.exit_code == 0
    assert seen == ["http://env.test/v1/seats/release"]


def test_balance_of_one_meter(serve: Callable[..., None]) -> None:
    meters = {
        "meters": [
            {"meter": "runs", "limit": 10, "period": None, "period_start": None, "used": 3,
             "remaining": 7, "over_limit": "refuse"},
        ]
    }  # fmt: skip
    serve(respond(200, meters))
    result = runner.invoke(app, ["client", "balance", "runs", "--url", "http://s.test"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["remaining"] == 7
    missing = runner.invoke(app, ["client", "balance", "other", "--url", "http://s.test"])
    assert missing.exit_code == 2
