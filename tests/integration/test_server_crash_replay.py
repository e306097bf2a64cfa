"""A crash between the ledger sync and the state commit does not count a retry twice."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterbox.ledger import Record, RecordType
from meterbox.licenses import Meter
from meterbox.server._core.changes import Change, IdemPut, LeasePut, SeqMax, UsageDelta
from meterbox.server._core.ledgerstate import LedgerState
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


def test_replay_skips_the_records_the_state_committed_ahead_of_its_last_seq() -> None:
    """ADR 0044: an unkeyed usage committed ahead of the watermark is not counted twice."""
    changes = replay_changes(
        [_usage(10, None), _usage(11, None), _usage(12, None)],
        usage={},
        idempotency_keys=(),
        licenses={"lic_a": _policy()},
        committed={11},
    )
    assert len([c for c in changes if isinstance(c, UsageDelta)]) == 2
    assert changes[-1] == SeqMax(12)


def test_the_fold_as_of_the_cache_holds_the_records_ahead_of_it() -> None:
    fold = LedgerState({"lic_a": _policy()})
    fold.watch(10, {12})
    fold.restore(None)
    for r in (_usage(10, None), _usage(11, None), _usage(12, None)):
        fold.apply(r.type, r.payload, r.wall_ms, r.seq)
    assert fold.finish().usage == {("lic_a", "runs", "2026-03"): 15}
    assert fold.at_watch is not None
    assert fold.at_watch.usage == {("lic_a", "runs", "2026-03"): 10}


def test_replayed_decrement_never_goes_below_zero() -> None:
    changes = replay_changes(
        [_usage(3, "d1", RecordType.USAGE_DECREMENT)],
        usage={("lic_a", "runs", "2026-03"): 2},
        idempotency_keys=(),
        licenses={"lic_a": _policy()},
    )
    assert [c.delta for c in changes if isinstance(c, UsageDelta)] == [-2]


class _SlowKeys:
    """Cluster idempotency keys (ADR 0033) whose publish of one key waits to be let go:
    holds one request between its durable record and its state commit."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.counters: dict[str, int] = {}
        self.held = asyncio.Event()
        self.go = asyncio.Event()

    async def lookup(self, licenses: object, meter: str, key: str) -> None:
        return None

    async def publish(self, result: object, fp: str) -> None:
        if getattr(result, "idempotency_key", None) == self.slow:
            self.held.set()
            await self.go.wait()


@pytest.mark.parametrize("fast_key", ["fast", None])
def test_a_crash_while_an_earlier_record_awaits_its_state_commit_is_no_edit(
    data: Path, tmp_path: Path, fast_key: str | None
) -> None:
    """Two requests made durable in one order and committed to the state in the other,
    then a crash: the state's last seq must not claim the earlier record, so the open
    replays it and finds nothing edited (no critical ``state.rebuilt``), and the later
    one, committed already, is not replayed a second time (ADR 0044)."""
    inst = ServerInstance.open(data)
    keys = _SlowKeys("slow")
    inst.service.shared_keys = keys  # type: ignore[assignment]
    crashed = tmp_path / "crashed"

    async def drill() -> tuple[int, int]:
        first = asyncio.ensure_future(inst.service.usage("runs", 5, "client-1", "slow"))
        await keys.held.wait()  # durable in the ledger, its state commit not yet made
        second = await inst.service.usage("runs", 1, "client-1", fast_key)
        # The power goes: what is on disk now is what the next open finds.
        shutil.copytree(data, crashed, ignore=shutil.ignore_patterns("ledger.lock"))
        keys.go.set()
        return (await first).seq or 0, second.seq or 0

    slow_seq, fast_seq = asyncio.run(drill())
    inst.close()
    assert slow_seq < fast_seq  # the earlier record was committed to the state last

    again = ServerInstance.open(crashed)
    try:
        assert [r for r in again.rebuilt if r.less] == []
        assert again.store.load().usage[("lic_acme", "runs", "total")] == 6
        retry = asyncio.run(again.service.usage("runs", 5, "client-1", "slow"))
        assert retry.replayed and retry.used == 6
    finally:
        again.close()


def test_a_crash_while_a_checkout_awaits_its_state_commit_is_only_older(
    data: Path, tmp_path: Path
) -> None:
    """A checkout durable in the ledger waits for its state commit while a later usage
    request commits; the power goes. The lease the state lacks is a crash's trace (a
    warning, ``older``), never an edit, and the usage committed ahead counts once."""
    inst = ServerInstance.open(data)
    service = inst.service
    real_save = service._save
    held, go = asyncio.Event(), asyncio.Event()
    crashed = tmp_path / "crashed"

    async def save(changes: list[Change], seq: int | None, now: datetime) -> None:
        if any(isinstance(c, LeasePut) for c in changes) and not go.is_set():
            held.set()
            await go.wait()  # as a request waits for the service lock
        await real_save(changes, seq, now)

    service._save = save  # type: ignore[method-assign]

    async def drill() -> str:
        first = asyncio.ensure_future(service.checkout("cad", "client-1"))
        await held.wait()
        await service.usage("runs", 1, "client-2")
        shutil.copytree(data, crashed, ignore=shutil.ignore_patterns("ledger.lock"))
        go.set()
        return (await first).lease.lease_id

    lease_id = asyncio.run(drill())
    inst.close()

    again = ServerInstance.open(crashed)
    try:
        assert [(r.cache, r.reason, r.less) for r in again.rebuilt] == [
            ("state.db", "older", False)
        ]
        snap = again.store.load()
        assert [x.lease_id for x in snap.leases] == [lease_id]  # rebuilt from the ledger
        assert snap.usage[("lic_acme", "runs", "total")] == 1
        assert snap.seq_ahead == frozenset()
    finally:
        again.close()


def test_a_cache_edited_to_claim_a_record_ahead_is_still_an_edit(
    data: Path, tmp_path: Path
) -> None:
    """``seq_ahead`` is the state's word: a site that adds the seq of a usage record to it
    (so the open would skip that record) and drops the usage is found out (critical)."""
    inst = ServerInstance.open(data)
    first = asyncio.run(inst.service.usage("runs", 5, "client-1", "k1"))
    asyncio.run(inst.service.usage("runs", 2, "client-1", "k2"))
    crashed = tmp_path / "crashed"  # the power goes: the edit is made to what survived
    shutil.copytree(data, crashed, ignore=shutil.ignore_patterns("ledger.lock"))
    inst.close()
    with sqlite3.connect(crashed / "state.db") as db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'last_seq'", (str((first.seq or 0) - 1),))
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('seq_ahead', ?)", (str(first.seq),)
        )
        db.execute("UPDATE usage SET used = 2")
        db.execute("DELETE FROM idempotency WHERE key = 'k1'")
    again = ServerInstance.open(crashed)
    try:
        assert [(r.cache, r.less) for r in again.rebuilt] == [("state.db", True)]
        assert again.store.load().usage[("lic_acme", "runs", "total")] == 7
    finally:
        again.close()
