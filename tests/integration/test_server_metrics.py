"""`/metrics` of a real `meterbox server run`, parsed with prometheus_client's parsers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from meterbox import __version__
from meterbox.server._metrics import Snapshot, server_registry
from support.server_proc import ServerProcess, make_data


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    data = make_data(tmp_path, seats=2, overdraft=1, meter_limit=100)
    proc = ServerProcess(data.data, tmp_path / "server.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _scrape(url: str, accept: str | None = None) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    response = httpx.get(url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200
    return response


def test_metrics_parse_with_the_right_types_names_and_values(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        for n in range(4):  # two seats, one overdraft seat, then a denial
            c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": f"host/{n}"})
        ok = c.post("/v1/usage", json={"meter": "runs", "amount": 7, "client_id": "host/1"})
        assert ok.status_code == 200, ok.text

    response = _scrape(server.url)
    # The content type is the library's, for the text format it wrote.
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples["meterbox_seats_in_use", (("feature", "cad"),)] == 3
    assert samples["meterbox_seats_granted", (("feature", "cad"),)] == 2
    assert samples["meterbox_seats_overdraft", (("feature", "cad"),)] == 1
    assert samples["meterbox_seat_denials_total", (("feature", "cad"),)] == 1
    assert samples["meterbox_checkouts_total", ()] == 3
    assert samples["meterbox_usage_used", (("license", "lic-site"), ("meter", "runs"))] == 7
    assert samples["meterbox_usage_limit", (("license", "lic-site"), ("meter", "runs"))] == 100
    assert samples["meterbox_ledger_seq", ()] >= 4
    assert samples["meterbox_report_overdue", ()] == 0
    build = families["meterbox_build_info"].samples[0]  # an info is a gauge in text 0.0.4
    assert build.labels["version"] == __version__
    assert samples["process_resident_memory_bytes", ()] > 0
    assert "python_info" in families
    # A single server has no cluster to report on.
    assert not [n for n in families if n.startswith("meterbox_cluster_")]

    for name, family in families.items():
        if not name.startswith("meterbox_"):
            continue
        # Counters are counters and end in _total; gauges never do.
        if family.type == "counter":
            assert all(s.name == name + "_total" for s in family.samples), name
        else:
            assert family.type in ("gauge", "info"), (name, family.type)
            assert not any(s.name.endswith("_total") for s in family.samples), name


def test_openmetrics_is_served_when_asked(server: ServerProcess) -> None:
    response = _scrape(server.url, "application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(response.text)}
    assert {"meterbox_seats_in_use", "meterbox_checkouts", "meterbox_build"} <= names


def _snapshot(in_use: int) -> Snapshot:
    seat = {"feature": "cad", "in_use": in_use, "seats": 2, "overdraft": 0, "denials": 0}
    return Snapshot(
        [seat], [], {"checkouts": in_use}, 1, 0, False, {}, datetime(2026, 1, 1, tzinfo=UTC)
    )


def test_each_server_has_its_own_registry() -> None:
    first, second = server_registry(lambda: _snapshot(1)), server_registry(lambda: _snapshot(2))
    assert b'meterbox_seats_in_use{feature="cad"} 1.0' in generate_latest(first)
    assert b'meterbox_seats_in_use{feature="cad"} 2.0' in generate_latest(second)
    # Nothing is registered in the library's process-wide default registry.
    assert b"meterbox_" not in generate_latest(REGISTRY)
