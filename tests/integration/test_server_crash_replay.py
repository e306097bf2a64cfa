"""A crash between the ledger sync and the state commit does not count a retry twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterbox.ledger import Record, RecordType
from meterbox.licenses import Meter
from meterbox.server._core.changes import IdemPut, SeqMax, UsageDelta
from meterbox.server._core.policy import FeaturePolicy, LicensePolicy, MeterPolicy
from meterbox.server._core.replay import replay_changes
from meterbox.server._instance import ServerInstance, init_server
from support.vendor_ingest import issue, make_home


@pytest.fixture
def data(tmp_path: Path) -> Path:
    home = make_home(tmp_path)
    lic = tmp_path / "acme.lic"
    lic.write_bytes(issue(home, meters={"runs": Meter(100, "total")}, record=False))
    init_server(
        tmp_path / "srv", vendor_pub=home / "vendor.pub", license_files=[lic], fingerprint="x"
    )
    return tmp_path / "srv"


def test_usage_lost_from_state_in_a_crash_is_replayed_from_the_ledger(data: Path) -> None:
    inst = ServerInstance.open(data)
    real_apply = inst.store.apply
    inst.store.apply = lambda changes: None  # type: ignore[method-assign]  # the commit is lost
    first = asyncio.run(inst.service.usage("runs", 7, "client-1", "key-1"))
    assert first.used == 7
    inst.store.apply = real_apply  # type: ignore[method-assign]
    inst.close()  # the state never saw the usage; the ledger holds it

    again = ServerInstance.open(data)
    try:
        retry = asyncio.run(again.service.usage("runs", 7, "client-1", "key-1"))
        assert retry.replayed
        assert retry.used == 7
        fresh = asyncio.run(again.service.usage("runs", 1, "client-1", "key-2"))
        assert fresh.used == 8  # the replayed 7 count against the quota
    finally:
        again.close()


def _policy() -> LicensePolicy:
    return LicensePolicy(
        license_id="lic_a",
        customer="c",
        product="p",
        issued=datetime(2026, 1, 1, tzinfo=UTC),
        expires=None,
        features={"cad": FeaturePolicy(1, 0, 60)},
        meters={"runs": MeterPolicy(100, "month", "refuse")},
        report_every_days=None,
        grace_days=0,
    )


def _usage(seq: int, key: str | None, rtype: RecordType = RecordType.USAGE) -> Record:
    payload = {"m": "runs", "a": 5, "c": "c1", "l": "lic_a"}
    if key:
        payload["k"] = key
    wall = int(datetime(2026, 3, 10, tzinfo=UTC).timestamp() * 1000)
    return Record(seq, rtype, 1, wall, 0, payload)


def test_replay_applies_unknown_usage_and_skips_known_keys() -> None:
    changes = replay_changes(
        [_usage(10, "k-new"), _usage(11, "k-old"), _usage(12, None)],
        usage={("lic_a", "runs", "2026-03"): 20},
        idempotency_keys={"k-old"},
        licenses={"lic_a": _policy()},
    )
    deltas = [c for c in changes if isinstance(c, UsageDelta)]
    assert [(d.period, d.delta) for d in deltas] == [("2026-03", 5), ("2026-03", 5)]
    puts = [c for c in changes if isinstance(c, IdemPut)]
    assert [p.key for p in puts] == ["k-new"]
    assert puts[0].entry.result.used == 25
    assert changes[-1] == SeqMax(12)


def test_replayed_decrement_never_goes_below_zero() -> None:
    changes = replay_changes(
        [_usage(3, "d1", RecordType.USAGE_DECREMENT)],
        usage={("lic_a", "runs", "2026-03"): 2},
        idempotency_keys=(),
        licenses={"lic_a": _policy()},
    )
    assert [c.delta for c in changes if isinstance(c, UsageDelta)] == [-2]
