"""What a node publishes for an idempotency key, and the answer a resend gets (ADR 0033)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.server._cluster._idem import Published, answer, idem_path
from meterbox.server._core.meters import UsageResult, fingerprint
from meterbox.server._errors import IdempotencyConflictError

_text = st.text(min_size=1, max_size=40)

_results = st.builds(
    UsageResult,
    kind=st.sampled_from(["usage", "usage.decrement"]),
    meter=_text,
    amount=st.integers(1, 10**12),
    client_id=_text,
    license_id=_text,
    period=st.sampled_from(["total", "2026-01"]),
    used=st.integers(0, 10**15),
    limit=st.none() | st.integers(0, 10**15),
    flagged=st.booleans(),
    seq=st.none() | st.integers(0, 2**53),
    idempotency_key=_text,
)


@given(st.text(min_size=1, max_size=64), _results)
def test_published_entries_round_trip(node: str, result: UsageResult) -> None:
    fp = fingerprint(result.kind, result.meter, result.amount, result.client_id)
    entry = Published(node, fp, result)
    assert Published.from_bytes(entry.to_bytes()) == entry


@given(st.binary(max_size=200))
def test_any_other_value_reads_as_none_or_an_entry(data: bytes) -> None:
    found = Published.from_bytes(data)
    assert found is None or isinstance(found, Published)


@given(_results)
def test_a_resend_gets_the_recorded_answer_replayed(result: UsageResult) -> None:
    fp = fingerprint(result.kind, result.meter, result.amount, result.client_id)
    got = answer(Published("node-a", fp, result), fp, "k")
    assert got.replayed and got == UsageResult(**{**result.__dict__, "replayed": True})


@given(_results, st.integers(1, 10**12))
def test_a_different_request_under_the_key_is_a_conflict(result: UsageResult, n: int) -> None:
    fp = fingerprint(result.kind, result.meter, result.amount, result.client_id)
    other = fingerprint(result.kind, result.meter, result.amount + n, result.client_id)
    with pytest.raises(IdempotencyConflictError, match="already used") as info:
        answer(Published("node-a", fp, result), other, "k")
    assert "node-a" in str(info.value.found)


@given(_text, _text, _text)
def test_paths_keep_every_segment_apart(lic: str, meter: str, key: str) -> None:
    path = idem_path(lic, meter, key)
    assert path.startswith("/meterbox/") and path.count("/") == 5
    assert path.split("/")[3] == "idem"
