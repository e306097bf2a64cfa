"""Property: for random request histories, the state rebuilt from the ledger is the live one.

Real server instances on real files under a manual clock: hypothesis draws a history
of usage, give-backs, checkouts, renewals, releases, expiries and top-ups (some
refused by the engine), runs it through the real service, notes what the engine
holds, then deletes ``state.db`` and opens the instance again. The engine built from
the ledger alone must hold the same usage, top-ups and live leases, and a history
the engine refused in part must have sealed nothing for the refused requests.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.clock import ManualClock
from meterbox.errors import MeterboxError
from meterbox.ledger import LedgerWriter
from meterbox.server._instance import ServerInstance, init_server
from support.crash import make_vendor

_START = datetime(2026, 6, 1, tzinfo=UTC)

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("use"), st.integers(1, 40), st.booleans()),
        st.tuples(st.just("checkout"), st.integers(0, 4), st.just(False)),
        st.tuples(st.just("release"), st.integers(0, 4), st.just(False)),
        st.tuples(st.just("wait"), st.integers(1, 90), st.just(False)),
        st.tuples(st.just("topup"), st.integers(1, 50), st.just(False)),
    ),
    max_size=25,
)


def _engine_view(inst: ServerInstance) -> dict[str, Any]:
    engine = inst.service.engine
    now = inst.service.now()
    return {
        "usage": {k: v for k, v in engine.meters.usage.items() if v},
        "topups": sorted((t.topup_id, t.amount) for t in engine.meters.topups.values()),
        "leases": sorted(
            (x.lease_id, x.client_id)
            for f in engine.feature_names()
            for x in engine.seats.live(f, now)
        ),
    }


async def _run(data: Path, clock: ManualClock, ops: list[tuple[str, int, bool]]) -> dict[str, Any]:
    inst = ServerInstance.open(data, clock=clock)
    leases: dict[int, str] = {}
    try:
        for n, (op, x, flag) in enumerate(ops):
            try:
                if op == "use":
                    await inst.service.usage("runs", x, "app", f"k-{n}", decrement=flag)
                elif op == "checkout":
                    leases[x] = (await inst.service.checkout("cad", f"ws-{x}")).lease.lease_id
                elif op == "release" and x in leases:
                    await inst.service.release(leases.pop(x))
                elif op == "wait":
                    clock.advance(x * 1000)
                    await inst.service.cull()
                elif op == "topup":
                    await inst.service.import_topup(f"tu-{n}", "lic-crash", "runs", x)
            except MeterboxError:
                pass  # refused: the property below says it sealed nothing either
        await inst.service.aclose()
        return _engine_view(inst)
    finally:
        inst.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_ops)
def test_state_rebuilt_from_the_ledger_equals_the_live_state(
    ops: list[tuple[str, int, bool]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        vendor = make_vendor(root)
        data = root / "data"
        clock = ManualClock(wall_ms=int(_START.timestamp() * 1000))
        init_server(
            data,
            vendor_pub=vendor.home / "vendor.pub",
            license_files=list(vendor.license_files),
            clock=clock,
            fingerprint="x",
        )
        live = asyncio.run(_run(data, clock, ops))
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (data / name).unlink(missing_ok=True)
        inst = ServerInstance.open(data, clock=clock)
        try:
            rebuilt = _engine_view(inst)
        finally:
            inst.close()
        shutil.rmtree(data)
    assert rebuilt == live


def test_a_ledger_whose_last_epoch_has_no_state_record_opens_and_gains_one(
    tmp_path: Path,
) -> None:
    """A ledger of revision 1.1 (no STATE records) opens on its caches, as before."""
    vendor = make_vendor(tmp_path)
    data = tmp_path / "data"
    clock = ManualClock(wall_ms=int(_START.timestamp() * 1000))
    init_server(
        data,
        vendor_pub=vendor.home / "vendor.pub",
        license_files=list(vendor.license_files),
        clock=clock,
        fingerprint="x",
    )
    live = asyncio.run(_run(data, clock, [("use", 30, False), ("checkout", 1, False)]))
    # An older release opened the ledger last: its epoch has no STATE record.
    LedgerWriter.open(data / "ledger", clock=clock).close()
    inst = ServerInstance.open(data, clock=clock)
    try:
        assert inst.writer.fold_origin == "partial"
        assert inst.rebuilt == []
        assert _engine_view(inst) == live
    finally:
        inst.close()
    # The epoch that open began carries STATE: the ledger alone now rebuilds the state.
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (data / name).unlink(missing_ok=True)
    inst = ServerInstance.open(data, clock=clock)
    try:
        assert inst.writer.fold_origin == "state"
        assert [r.reason for r in inst.rebuilt] == ["missing"]
        assert _engine_view(inst) == live
    finally:
        inst.close()
