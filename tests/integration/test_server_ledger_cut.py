"""The real server process, stopped, its ledger cut or its chain.key put back, started again.

What a customer with root does between two runs of `meterbox server run`: the server
must notice at its next start, without any vendor secret, record LEDGER_SHORTENED, keep
serving from what the ledger proves, and the vendor's ingest must reject the report
(critical ``ledger.shortened`` or ``ledger.key_state_behind``).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from meterbox.ledger import RecordType
from meterbox.ledger._format import FILE_HEADER_LEN
from support.server_proc import Data, ServerProcess, make_data
from support.vendor_ingest import codes, ingest_json


def _use(url: str, n: int, prefix: str) -> int:
    total = 0
    with httpx.Client(base_url=url, timeout=30) as c:
        for i in range(n):
            body = {"meter": "runs", "amount": 2, "client_id": "ws-1",
                    "idempotency_key": f"{prefix}-{i}"}  # fmt: skip
            assert c.post("/v1/usage", json=body).status_code == 200
            total += 2
    return total


def _export(site: Data, url: str, out: Path) -> Path:
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/admin/export", headers={"Authorization": f"Bearer {site.token}"})
    assert r.status_code == 200, r.text
    out.write_bytes(r.content)
    return out


def _cut_last_frames(path: Path, n: int) -> None:
    data = path.read_bytes()
    offsets, pos = [], FILE_HEADER_LEN
    while pos < len(data):
        offsets.append(pos)
        pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
    with path.open("r+b") as fh:
        fh.truncate(offsets[-n])


def test_a_ledger_cut_while_the_server_was_stopped_is_recorded_and_flagged(
    tmp_path: Path,
) -> None:
    site = make_data(tmp_path)
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        _use(server.url, 10, "a")
    finally:
        server.stop()
    # Cut the last six records (the shutdown record and five usage records) cleanly at
    # frame boundaries: no key needed, and the old format left no trace of it.
    _cut_last_frames(site.data / "ledger" / "ledger.mbl", 6)
    server.start()
    try:
        # Still serving, from what the ledger proves.
        _use(server.url, 1, "b")
        report = _export(site, server.url, tmp_path / "cut.report")
    finally:
        server.stop()
    records, result = site.verify(report.read_bytes())
    shortened = [r for r in records if r.type == RecordType.LEDGER_SHORTENED]
    assert len(shortened) == 1 and shortened[0].payload["r"] == "shorter"
    assert shortened[0].payload["ks"] - shortened[0].payload["ls"] == 6
    # The server's state had applied records the ledger no longer holds: said so too.
    assert shortened[0].payload["k"] > shortened[0].payload["ls"]
    assert "ledger.shortened" in result.codes and result.critical
    # The vendor bills what the ledger holds and flags the cut (critical evidence).
    code, outcome = ingest_json(site.home, report)
    assert "ledger.shortened" in codes(outcome), outcome
    assert outcome["status"] == "accepted_with_findings", outcome
    assert code != 0


def test_a_saved_chain_key_put_back_while_the_server_was_stopped_is_flagged(
    tmp_path: Path,
) -> None:
    site = make_data(tmp_path)
    server = ServerProcess(site.data, tmp_path / "server.log")
    server.start()
    try:
        _use(server.url, 3, "a")
    finally:
        server.stop()
    saved = (site.data / "ledger" / "chain.key").read_bytes()
    # The server runs on (with a restart in between), then the copy goes back and the
    # tail is cut to where the customer wants it.
    for round_ in range(2):
        server.start()
        try:
            _use(server.url, 4, f"r{round_}")
        finally:
            server.stop()
    (site.data / "ledger" / "chain.key").write_bytes(saved)
    _cut_last_frames(site.data / "ledger" / "ledger.mbl", 5)
    server.start()
    try:
        report = _export(site, server.url, tmp_path / "restored.report")
    finally:
        server.stop()
    _, result = site.verify(report.read_bytes())
    assert result.codes & {"ledger.key_state_behind", "ledger.shortened"}
    assert result.critical
    _, outcome = ingest_json(site.home, report)
    assert outcome["status"] == "accepted_with_findings", outcome
