"""Random event sequences round-trip through the sealed ledger and a report."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterbox.ledger import LedgerConfig, RecordType, ReportVerifier
from meterbox.ledger._format import INTERNAL_TYPES
from support.ledger import VENDOR, VENDOR_ID, export, make_ledger

# STATE_REBUILT is a server record the verifier reports on by itself (state.rebuilt).
SERVER_TYPES = [t for t in RecordType if t not in INTERNAL_TYPES | {RecordType.STATE_REBUILT}]
payloads = st.dictionaries(
    st.text(min_size=1, max_size=3),
    st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=40), st.binary(max_size=32)),
    max_size=5,
)
events = st.lists(
    st.tuples(st.sampled_from(SERVER_TYPES), payloads, st.integers(0, 10_000)), max_size=40
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events, epoch_max=st.integers(2, 50), checkpoint_every=st.integers(1, 30))
def test_random_event_sequences_round_trip(
    events: list[tuple[RecordType, dict[str, object], int]], epoch_max: int, checkpoint_every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = LedgerConfig(epoch_max_records=epoch_max, checkpoint_every=checkpoint_every)
        built = make_ledger(Path(tmp) / "l", config=config)
        for rtype, payload, step in events:
            built.clock.advance(step)
            built.writer.append(rtype, payload)
        data = export(built)
        built.writer.close()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    got = [
        (r.type, r.payload)
        for r, _ in verifier.records(io.BytesIO(data))
        if r.type not in INTERNAL_TYPES
    ]
    assert verifier.result.findings == []
    assert got == [(t, p) for t, p, _ in events]


def test_typical_usage_record_fits_in_160_bytes(tmp_path: Path) -> None:
    # In a group-committed batch a record costs its frame (length, 35-byte header,
    # payload, tag); a batch adds one 16-byte seal on its last record.
    built = make_ledger(tmp_path / "l")
    payload = {
        "m": "solver-runs",
        "a": 125,
        "c": "workstation-17/pid-40211",
        "k": "9f86d081884c7d659a2feaa0c55ad015",
        "l": "lic_0123456789abcdef",
    }
    path = built.directory / "ledger.mbl"
    before = path.stat().st_size
    built.writer.append(RecordType.USAGE, payload)
    alone = path.stat().st_size - before
    assert alone <= 160 + 16
    before = path.stat().st_size
    futs = [built.writer.submit(RecordType.USAGE, payload) for _ in range(200)]
    seqs = {f.result().seq for f in futs}
    per_record = (path.stat().st_size - before) / len(seqs)
    assert per_record <= 160
    built.writer.close()


def test_report_of_many_records_verifies_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    built = make_ledger(tmp_path / "l")
    futs = [built.writer.submit(RecordType.USAGE, {"m": "m", "a": i}) for i in range(30_000)]
    for f in futs:
        f.result()
    data = export(built)
    built.writer.close()
    tracemalloc.start()
    verifier = ReportVerifier({VENDOR_ID: VENDOR})
    verifier.verify(io.BufferedReader(io.BytesIO(data)))  # type: ignore[arg-type]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert verifier.result.findings == []
    assert peak < 8 * 1024 * 1024  # a few read buffers, not the report
