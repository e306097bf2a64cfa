"""The ledger's fold: STATE records after every EPOCH, and rebuild == live state.

Real ledger files under a manual clock: random sequences of the records the server
writes go through a writer that folds them live; the ledger is then reopened with a
fresh fold, which must arrive at the same state from the last epoch alone (its
STATE record plus the records after it), whatever the epoch length.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.errors import FormatError
from meterbox.ledger import LedgerConfig, LedgerWriter, RecordType, ReportVerifier
from meterbox.ledger._format import MAX_PAYLOAD_LEN
from meterbox.ledger.records import State, merge_states, split_state
from meterbox.server._core.ledgerstate import LedgerState, StateView, compare
from support.ledger import VENDOR, VENDOR_ID, Built, export, make_ledger

LICENSES = ("lic-a", "lic-b")
LEASES = tuple(f"lease-{i}" for i in range(6))

_usage = st.builds(
    lambda lid, m, a, obj, dec: (
        RecordType.USAGE_DECREMENT if dec else RecordType.USAGE,
        {"m": m, "a": a, "c": f"cryptolens/{obj}" if obj else "app", "l": lid},
    ),
    st.sampled_from(LICENSES),
    st.sampled_from(("runs", "pages")),
    st.integers(1, 1000),
    st.integers(0, 2),
    st.booleans(),
)
_checkout = st.builds(
    lambda i, lid, e, k: (
        RecordType.SEAT_CHECKOUT,
        {"i": i, "f": "cad", "c": "ws", "l": lid, "e": e} | ({"k": k} if k else {}),
    ),
    st.sampled_from(LEASES),
    st.sampled_from(LICENSES),
    st.integers(1_767_225_000, 1_767_225_900),
    st.sampled_from(("", "0a1b2c3d", "deadbeef")),
)
_removed = st.builds(
    lambda i, why: (RecordType.SEAT_REMOVED, {"i": i, "b": "admin via cli"} | why),
    st.sampled_from(LEASES),
    st.sampled_from(({}, {"r": "needed elsewhere"})),
)
_notice = st.builds(
    lambda lid, kind, q, n: (
        RecordType.LICENSE_REVOKED if kind == "revoke" else RecordType.LICENSE_SUSPENDED,
        {"l": lid, "n": f"ntc-{n}", "q": q} | ({"x": 1} if kind == "resume" else {}),
    ),
    st.sampled_from(LICENSES),
    st.sampled_from(("suspend", "suspend", "resume", "resume", "revoke")),
    st.integers(1, 12),
    st.integers(0, 99),
)
_borrow = st.builds(
    lambda i, lid, e, h: (
        RecordType.SEAT_BORROWED,
        {"i": i, "f": "cad", "c": "laptop", "l": lid, "e": e, "h": h},
    ),
    st.sampled_from(LEASES),
    st.sampled_from(LICENSES),
    st.integers(1_767_225_000, 1_767_300_000),
    st.sampled_from(("aa" * 32, "bb" * 32)),
)
_renew = st.builds(
    lambda i, e: (RecordType.SEAT_RENEW, {"i": i, "e": e}),
    st.sampled_from(LEASES),
    st.integers(1_767_225_000, 1_767_226_000),
)
_end = st.builds(
    lambda t, i: (t, {"i": i}),
    st.sampled_from((RecordType.SEAT_RELEASE, RecordType.SEAT_EXPIRE, RecordType.SEAT_RETURNED)),
    st.sampled_from(LEASES),
)
_topup = st.builds(
    lambda n, lid, a: (RecordType.TOPUP_IMPORTED, {"t": f"tu-{n}", "l": lid, "m": "runs", "a": a}),
    st.integers(0, 4),
    st.sampled_from(LICENSES),
    st.integers(1, 500),
)
_receipt = st.builds(
    lambda s, day: (
        RecordType.RECEIPT_IMPORTED,
        {"s": s, "t": f"2023-11-{day:02d}T00:00:00+00:00", "r": f"r{s}"},
    ),
    st.integers(0, 100),
    st.integers(1, 28),
)
_machine = st.builds(
    lambda on, lid, code: (
        RecordType.MACHINE_ACTIVATED if on else RecordType.MACHINE_DEACTIVATED,
        {"l": lid, "c": code, "n": 1},
    ),
    st.booleans(),
    st.sampled_from(LICENSES),
    st.sampled_from(("m1", "m2", "")),
)
_other = st.just((RecordType.HEARTBEAT, {"n": 1}))
# Quota blocks of a cluster node: taken, drawn on by the usage records above (license
# lic-a, meter runs), returned. The fold must carry the open ones across epochs.
_block_taken = st.builds(
    lambda b, n: (
        RecordType.QUOTA_BLOCK_TAKEN,
        {"b": f"blk-{b}", "l": "lic-a", "m": "runs", "p": "2026-01", "n": n},
    ),
    st.integers(0, 5),
    st.integers(1, 3000),
)
_block_returned = st.builds(
    lambda b, u: (
        RecordType.QUOTA_BLOCK_RETURNED,
        {"b": f"blk-{b}", "l": "lic-a", "m": "runs", "p": "2026-01", "u": u, "n": 0, "r": "unused"},
    ),
    st.integers(0, 5),
    st.integers(0, 100),
)
events = st.lists(
    st.tuples(
        st.one_of(
            _usage,
            _checkout,
            _borrow,
            _renew,
            _end,
            _removed,
            _notice,
            _topup,
            _receipt,
            _machine,
            _other,
            _block_taken,
            _block_returned,
        ),
        st.integers(0, 5_000),
    ),
    max_size=60,
)


def _enforced(view: StateView, floor_ms: int) -> dict[str, Any]:
    """What enforcement reads at ``floor_ms`` (clock floor and head move on with every
    record; a lease past its expiry grants nothing and may be left out of a STATE)."""
    return {
        "usage": {k: n for k, n in view.usage.items() if n},
        "topups": view.topups,
        "leases": {k: x for k, x in view.leases.items() if x.expires_ms > floor_ms},
        "charged": {k: n for k, n in view.charged.items() if n},
        "machines": view.machines,
        "receipt": view.receipt,
        "standings": view.standings,
        "removed": {k: r for k, r in view.removed.items() if r.lease.expires_ms > floor_ms},
        "quota": {k: (b.pool, b.size, b.used) for k, b in view.quota.open.items()},
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, epoch_max=st.integers(2, 40), reopen_at=st.integers(0, 60))
def test_rebuild_from_the_last_epoch_equals_the_live_state(
    events: list[tuple[tuple[RecordType, dict[str, Any]], int]], epoch_max: int, reopen_at: int
) -> None:
    config = LedgerConfig(epoch_max_records=epoch_max, checkpoint_every=7)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "l"
        live = LedgerState()
        built = make_ledger(directory, config=config)
        built.writer.close()
        # Start with a folder, as the server does; one reopen midway as well.
        writer = LedgerWriter.open(directory, clock=built.clock, config=config, folder=live)
        for n, ((rtype, payload), step) in enumerate(events):
            if n == reopen_at:
                writer.close()
                live = LedgerState()
                writer = LedgerWriter.open(directory, clock=built.clock, config=config, folder=live)
            built.clock.advance(step)
            writer.append(rtype, payload)
        floor = live.view.clock_floor_ms
        expected = _enforced(live.view, floor)
        writer.close()
        again = LedgerState()
        LedgerWriter.open(directory, clock=built.clock, config=config, folder=again).close()
    assert _enforced(again.view, floor) == expected
    assert again.view.clock_floor_ms >= floor
    assert not again.partial


def test_every_epoch_starts_with_a_state_record(tmp_path: Path) -> None:
    config = LedgerConfig(epoch_max_records=5)
    built = make_ledger(tmp_path / "l", config=config)
    built.writer.close()
    writer = LedgerWriter.open(
        built.directory, clock=built.clock, config=config, folder=LedgerState()
    )
    for i in range(20):
        writer.append(RecordType.USAGE, {"m": "runs", "a": i + 1, "l": "lic-a"})
    writer.close()
    writer = LedgerWriter.open(built.directory, clock=built.clock, config=config)
    report = export(Built(writer, built.clock, built.directory))
    writer.close()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    first: dict[int, RecordType] = {}
    for r, _ in verifier.records(io.BytesIO(report)):
        first.setdefault(r.epoch, r.type)
    assert verifier.result.findings == []
    # Every epoch but the ledger's first (whose state before is empty) opens with STATE.
    assert first.pop(0) == RecordType.GENESIS
    # The export above opened the ledger without a folder: no state, no STATE record.
    assert first.pop(max(first)) == RecordType.BOOT
    assert len(first) >= 4
    assert set(first.values()) == {RecordType.STATE}


def test_a_large_state_is_a_run_of_records_that_merges_back() -> None:
    state = State(
        usage=tuple(("lic", f"meter-{i}", "total", i) for i in range(6000)),
        leases=tuple(
            (f"lease-{i:06d}", "cad", f"client-{i}", "lic", 1, 2, 60, 0) for i in range(3000)
        ),
        clock_floor_ms=5,
        head_seq=9,
    )
    parts = split_state(state, MAX_PAYLOAD_LEN - 64)
    assert len(parts) > 1
    import msgpack

    assert all(len(msgpack.packb(p.to_map())) <= MAX_PAYLOAD_LEN - 64 for p in parts)
    assert merge_states([State.from_map(p.to_map()) for p in parts]) == state
    with pytest.raises(FormatError):
        merge_states(parts[1:])


def test_a_large_state_survives_a_reopen(tmp_path: Path) -> None:
    built = make_ledger(tmp_path / "l")
    built.writer.close()
    live = LedgerState()
    writer = LedgerWriter.open(built.directory, clock=built.clock, folder=live)
    for i in range(4000):
        writer.submit(RecordType.USAGE, {"m": f"meter-{i}", "a": 1, "l": "lic-a"})
    writer.append(RecordType.HEARTBEAT, {})
    writer.close()
    again = LedgerState()
    LedgerWriter.open(built.directory, clock=built.clock, folder=again).close()
    # The reopen above folded an epoch whose STATE was written by the open before it.
    third = LedgerState()
    LedgerWriter.open(built.directory, clock=built.clock, folder=third).close()
    assert third.restored is not None
    floor = live.view.clock_floor_ms
    assert _enforced(third.view, floor) == _enforced(live.view, floor)


def test_compare_names_what_favours_the_customer() -> None:
    truth = StateView(usage={("lic", "runs", "total"): 1000})
    cache = StateView(
        usage={("lic", "runs", "total"): 0}, topups={"t1": ("lic", "runs", 5, "total", 0)}
    )
    diff = compare(truth, cache, 0)
    assert any("usage lic/runs/total: cache 0, ledger 1000" in x for x in diff.less)
    assert any("top-up t1" in x for x in diff.less)
    assert not compare(truth, truth, 0)


_draw = st.builds(
    lambda a, dec: (
        RecordType.USAGE_DECREMENT if dec else RecordType.USAGE,
        {"m": "runs", "a": a, "c": "app", "l": "lic-a"},
    ),
    st.integers(1, 400),
    st.sampled_from((False, False, False, True)),
)
quota_events = st.lists(
    st.tuples(st.one_of(_block_taken, _block_returned, _draw, _draw, _other), st.integers(0, 50)),
    max_size=50,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=quota_events, epoch_max=st.integers(2, 12))
def test_a_cluster_node_s_quota_blocks_survive_every_epoch_and_reopen(
    events: list[tuple[tuple[RecordType, dict[str, Any]], int]], epoch_max: int
) -> None:
    """The blocks a node holds and what it granted from each, after a restart, are
    what the live fold had: the STATE row ``qb`` carries them across epochs."""
    config = LedgerConfig(epoch_max_records=epoch_max, checkpoint_every=7)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "l"
        live = LedgerState()
        built = make_ledger(directory, config=config)
        built.writer.close()
        writer = LedgerWriter.open(directory, clock=built.clock, config=config, folder=live)
        for (rtype, payload), step in events:
            built.clock.advance(step)
            writer.append(rtype, payload)
        expected = {k: (b.pool, b.size, b.used) for k, b in live.view.quota.open.items()}
        writer.close()
        again = LedgerState()
        LedgerWriter.open(directory, clock=built.clock, config=config, folder=again).close()
    assert {k: (b.pool, b.size, b.used) for k, b in again.view.quota.open.items()} == expected
