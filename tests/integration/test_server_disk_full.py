"""A full disk under the real server: 503 while full, nothing acknowledged lost, recovery.

The data directory lives on a real 4 MiB tmpfs mounted for the test (root may mount
here; the test fails rather than pretends if it cannot). A filler file takes every
free byte; requests then fail with 503 ``unavailable`` -- whether the ledger write or
the SQLite state write is the one refused -- and never with 500. Once the filler is
deleted, retries with the same idempotency keys and fresh requests succeed, the
exported report verifies, every acknowledged usage is in it exactly once, and the
balances (also after a restart) count each key once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import RecordType
from support.server_proc import ServerProcess, make_data
from support.tmpfs import fill, small_tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", "4m") as mnt:
        yield mnt


def _usage(c: httpx.Client, key: str, amount: int = 1) -> httpx.Response:
    body = {"meter": "runs", "amount": amount, "client_id": "c", "idempotency_key": key}
    return c.post("/v1/usage", json=body)


def test_full_disk_answers_503_loses_nothing_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    site = make_data(tmp_path, small_disk / "server")
    server = ServerProcess(site.data, tmp_path / "server.log")
    acked: dict[str, int] = {}
    refused: list[str] = []
    filler = small_disk / "filler"
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(20):
                r = _usage(c, f"before-{i}", 2)
                assert r.status_code == 200, r.text
                acked[f"before-{i}"] = 2

            assert fill(filler) > 0
            # Pages the ledger or SQLite already hold may take a few more records;
            # after that every request is refused with 503, none with 500.
            for i in range(300):
                r = _usage(c, f"full-{i}", 3)
                if r.status_code == 200:
                    acked[f"full-{i}"] = 3
                    continue
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                refused.append(f"full-{i}")
                if len(refused) >= 5:
                    break
            assert len(refused) >= 5, "the full disk never refused a request"
            seat = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "s"})
            assert seat.status_code == 503, seat.text
            assert c.get("/healthz").status_code == 200

            filler.unlink()
            for key in refused:
                r = _usage(c, key, 3)
                assert r.status_code == 200, r.text
                acked[key] = 3
            r = _usage(c, "after", 4)
            assert r.status_code == 200, r.text
            acked["after"] = 4
            seat = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "s"})
            assert seat.status_code == 200, seat.text
            used = sum(m["used"] for m in c.get("/v1/usage/balances").json()["meters"])
            assert used == sum(acked.values())
            auth = {"Authorization": f"Bearer {site.token}"}
            report = c.post("/v1/admin/export", headers=auth).content
        records, result = site.verify(report)
        assert not result.critical, result.findings
        keys = Counter(r.payload.get("k") for r in records if r.type == RecordType.USAGE)
        assert {k: keys[k] for k in acked} == dict.fromkeys(acked, 1)

        # The state on disk agrees after a restart: nothing acknowledged was lost.
        server.stop()
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            used = sum(m["used"] for m in c.get("/v1/usage/balances").json()["meters"])
            assert used == sum(acked.values())
            assert _usage(c, "before-0", 2).json()["replayed"] is True
    finally:
        server.stop()
