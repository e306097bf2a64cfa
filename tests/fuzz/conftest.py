"""Fixtures of the fuzz tests: one real server app per module, served in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from meterbox.server._runtime import build_server
from support.fuzz import Served, make_site


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    site = make_site(tmp_path_factory.mktemp("served"), seats=1000, meter_limit=None)
    built = build_server(site.data)
    try:
        with TestClient(built.app, raise_server_exceptions=True) as client:
            yield Served(site, built, client)
    finally:
        built.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """For bench/fuzz_all.py: write how many inputs each parser saw."""
    import json
    import os

    from support.fuzz import CASES

    path = os.environ.get("METERBOX_FUZZ_COUNTS_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(dict(CASES), f)
