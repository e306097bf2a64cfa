"""Fixtures of the fuzz tests: one real server app per module, served in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fuzz_support import Site, make_site
from starlette.testclient import TestClient

from meterbox.server.runtime import BuiltApp, build_app


class Served:
    """The real app (engine, ledger, state store, Cryptolens API) behind a test client."""

    def __init__(self, site: Site, built: BuiltApp, client: TestClient) -> None:
        self.site = site
        self.built = built
        self.client = client

    def state(self) -> tuple[object, ...]:
        service = self.built.instance.service
        now = service.now()
        import hashlib

        crypto_db = self.site.data / "cryptolens.db"
        return (
            service.ledger_head(),
            [(b["meter"], b["used"], b["limit"]) for b in service.engine.balances(now)],
            [
                (f["feature"], f["in_use"], sorted(x.lease_id for x in f["leases"]))
                for f in service.engine.seats_view(now)
            ],
            hashlib.sha256(crypto_db.read_bytes()).hexdigest() if crypto_db.exists() else None,
            sorted(p.name for p in (self.site.data / "licenses").iterdir()),
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    site = make_site(tmp_path_factory.mktemp("served"), seats=1000, meter_limit=None)
    built = build_app(site.data)
    try:
        with TestClient(built.app, raise_server_exceptions=True) as client:
            yield Served(site, built, client)
    finally:
        built.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """For bench/fuzz_all.py: write how many inputs each parser saw."""
    import json
    import os

    from fuzz_support import CASES

    path = os.environ.get("METERBOX_FUZZ_COUNTS_FILE")
    if path:
        with open(path, "w") as f:
            json.dump(dict(CASES), f)
