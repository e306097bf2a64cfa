"""The re-enrolment note (``tpm-reenrol.json``): round trip, refusal of bad input, and
the pure decision whether its TPM_REENROLLED is sealed in a ledger."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import FormatError
from meterbox.ledger import Head
from meterbox.server._tpm import CONFIG_VERSION, ReenrolIntent, sealed_reenrolment

hexes = st.binary(min_size=1, max_size=40).map(bytes.hex)


@st.composite
def intents(draw: st.DrawFn) -> ReenrolIntent:
    ek = draw(hexes)
    auth = draw(st.binary(min_size=32, max_size=32))
    if not draw(st.booleans()):
        return ReenrolIntent(ek, draw(st.text(max_size=40)), auth)
    config: dict[str, object] = {
        "v": CONFIG_VERSION,
        "mode": "require",
        "tcti": "swtpm:port=1",
        "counter_auth": auth.hex(),
        "identity": {"tpm": "tpm2", "ek_name": ek, "ak_name": draw(hexes)},
        "counter_at_init": draw(st.integers(min_value=0, max_value=2**64 - 1)),
    }
    before = Head(
        draw(st.integers(min_value=-1, max_value=2**62)), draw(st.binary(min_size=32, max_size=32))
    )
    return ReenrolIntent(ek, draw(st.text(max_size=40)), auth, config, before)


@given(intents())
def test_intent_round_trips(intent: ReenrolIntent) -> None:
    assert ReenrolIntent.from_bytes(intent.to_bytes()) == intent


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_with_a_format_error(data: bytes) -> None:
    try:
        parsed = ReenrolIntent.from_bytes(data)
    except FormatError as exc:
        problem = exc.problem
    else:
        # Anything accepted must say the same thing again.
        assert ReenrolIntent.from_bytes(parsed.to_bytes()) == parsed
        return
    assert "tpm-reenrol.json" in problem


@given(intents(), st.sampled_from(["v", "ek_name", "counter_auth", "config", "before"]))
def test_a_damaged_field_is_refused(intent: ReenrolIntent, key: str) -> None:
    raw = json.loads(intent.to_bytes())
    raw[key] = {"v": 2, "ek_name": 7, "counter_auth": "00", "config": [], "before": "x"}[key]
    with pytest.raises(FormatError, match="unreadable"):
        ReenrolIntent.from_bytes(json.dumps(raw).encode())


def test_a_config_for_another_tpm_is_refused() -> None:
    intent = ReenrolIntent(
        "0b01",
        "t",
        b"\x01" * 32,
        {"v": CONFIG_VERSION, "identity": {"ek_name": "0b02"}},
        Head(3, b"\x00" * 32),
    )
    with pytest.raises(FormatError, match="does not name the intent's endorsement key"):
        ReenrolIntent.from_bytes(intent.to_bytes())


@given(intents(), st.integers(min_value=-1, max_value=2**62))
def test_sealed_exactly_when_the_ledger_is_past_the_head_before_the_record(
    intent: ReenrolIntent, seq: int
) -> None:
    head = Head(seq, b"\x00" * 32)
    expected = intent.before is not None and seq > intent.before.seq
    assert sealed_reenrolment(intent, head) is expected
    assert not sealed_reenrolment(None, head)
