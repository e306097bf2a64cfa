"""SQLite state store: round trips through a real file, merges commute, one process at a time."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.errors import StateError
from meterbox.server._core.changes import (
    ClockFloor,
    DenialAdd,
    IdemPut,
    LeasePut,
    PeakMax,
    ReceiptPut,
    SeqMax,
    TopupPut,
    UsageDelta,
)
from meterbox.server._core.engine import ReceiptInfo
from meterbox.server._core.meters import AppliedTopup, IdemEntry, UsageResult
from meterbox.server._core.policy import FeaturePolicy, LicensePolicy, MeterPolicy
from meterbox.server._core.seats import SeatLease
from meterbox.server._state import StateStore

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)


def lease(i: int, expires: int = 60, ended: bool = False) -> LeasePut:
    return LeasePut(
        SeatLease(
            lease_id=f"lease-{i}",
            feature="cad",
            client_id=f"c{i}",
            license_id="L1",
            issued_at=T0,
            expires_at=T0 + timedelta(seconds=expires),
            lease_seconds=60,
            overdraft=i % 2 == 1,
            hostname="h" if i else None,
            recorded_at=T0,
        ),
        ended=ended,
    )


def test_leases_and_counters_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore(path) as store:
        store.initialize(init_time=T0, instance_id="abc")
        store.apply(
            [
                lease(1),
                lease(2),
                lease(2, ended=True),
                UsageDelta("L1", "runs", "total", 7),
                DenialAdd("cad"),
                PeakMax("cad", T0, 2),
                TopupPut(AppliedTopup("t1", "L1", "runs", 5, "total", T0)),
                ReceiptPut(ReceiptInfo(T0, 12, "r1")),
                SeqMax(30),
                ClockFloor(T0 + timedelta(seconds=9)),
                IdemPut(
                    "k",
                    IdemEntry(
                        "fp",
                        T0,
                        UsageResult("usage", "runs", 7, "c", "L1", "total", 7, 15, False, 29),
                    ),
                ),
            ]
        )
    with StateStore(path) as store:
        snap = store.load()
    assert [x.lease_id for x in snap.leases] == ["lease-1"]
    assert snap.leases[0] == lease(1).lease
    assert snap.usage == {("L1", "runs", "total"): 7}
    assert snap.denials == {"cad": 1} and snap.peaks == {("cad", T0): 2}
    assert snap.last_receipt == ReceiptInfo(T0, 12, "r1") and snap.last_seq == 30
    assert snap.clock_floor == T0 + timedelta(seconds=9) and snap.init_time == T0
    assert snap.idempotency["k"].result.seq == 29 and snap.instance_id == "abc"
    policy = LicensePolicy(
        "L1",
        "acme",
        "cad",
        T0,
        features={"cad": FeaturePolicy(2)},
        meters={"runs": MeterPolicy(10)},
    )
    e = snap.engine([policy])
    assert e.meters.limit("L1", "runs", policy.meters["runs"], "total") == 15
    assert e.seats.live("cad", T0) == [lease(1).lease]


def test_a_second_process_cannot_open_the_same_state(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db"), pytest.raises(StateError, match="in use"):
        StateStore(tmp_path / "s.db")


def test_failed_batch_changes_nothing(tmp_path: Path) -> None:
    with StateStore(tmp_path / "s.db") as store:
        with pytest.raises(TypeError):
            store.apply([UsageDelta("L1", "runs", "total", 3), "not a change"])  # type: ignore[list-item]
        assert store.load().usage == {}


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    StateStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StateError, match="version 99"):
        StateStore(path)


changes = st.lists(
    st.one_of(
        st.builds(lease, st.integers(0, 3), st.integers(1, 100), st.booleans()),
        st.builds(
            UsageDelta,
            st.just("L1"),
            st.sampled_from(["a", "b"]),
            st.just("total"),
            st.integers(-5, 20),
        ),
        st.builds(DenialAdd, st.sampled_from(["cad", "cam"]), st.integers(1, 3)),
        st.builds(PeakMax, st.just("cad"), st.just(T0), st.integers(0, 9)),
        st.builds(
            SeqMax,
            st.integers(0, 1000),
            st.lists(st.integers(0, 1100), max_size=4).map(lambda xs: tuple(sorted(set(xs)))),
        ),
        st.builds(lambda s: ClockFloor(T0 + timedelta(seconds=s)), st.integers(0, 99)),
    ),
    max_size=25,
)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batch=changes, seed=st.integers(0, 1000))
def test_batches_give_the_same_state_in_any_order(
    tmp_path_factory: pytest.TempPathFactory, batch: list, seed: int
) -> None:
    shuffled = list(batch)
    random.Random(seed).shuffle(shuffled)
    snaps = []
    for order in (batch, shuffled):
        with StateStore(tmp_path_factory.mktemp("s") / "s.db") as store:
            for c in order:  # one transaction per change, like separate requests
                store.apply([c])
            snaps.append(store.load())
    a, b = snaps
    key = lambda s: (  # noqa: E731
        sorted(s.leases, key=lambda x: x.lease_id),
        s.usage,
        s.denials,
        s.peaks,
        s.last_seq,
        s.seq_ahead,
        s.clock_floor,
    )
    assert key(a) == key(b)


def test_the_seqs_committed_ahead_of_the_watermark_are_kept_above_it(tmp_path: Path) -> None:
    """ADR 0044: ``seq_ahead`` holds only seqs above ``last_seq``; a rebuild clears it."""
    with StateStore(tmp_path / "s.db") as store:
        store.initialize(init_time=T0, instance_id="abc")
        store.apply([SeqMax(9, (11, 12))])
        assert (store.load().last_seq, store.load().seq_ahead) == (9, {11, 12})
        store.apply([SeqMax(11, (12, 14))])
        assert (store.load().last_seq, store.load().seq_ahead) == (11, {12, 14})
        store.apply([SeqMax(10)])  # an older commit's watermark lowers nothing
        assert (store.load().last_seq, store.load().seq_ahead) == (11, {12, 14})
        store.apply([SeqMax(14)])
        assert (store.load().last_seq, store.load().seq_ahead) == (14, frozenset())
        store.apply([SeqMax(14, (20,))])
        store.replace_enforced(usage={}, leases=[], topups=[], receipt=None, last_seq=30)
        assert (store.load().last_seq, store.load().seq_ahead) == (30, frozenset())


def test_a_damaged_seq_ahead_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with StateStore(path) as store:
        store.initialize(init_time=T0, instance_id="abc")
        store.apply([SeqMax(3, (5,))])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '5,x' WHERE key = 'seq_ahead'")
    with StateStore(path) as store, pytest.raises(StateError, match="damaged"):
        store.load()
