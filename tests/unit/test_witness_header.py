"""The Meterbox-Head / Meterbox-Witness value grammar (docs/spec/witness.md, version 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import FormatError, UnknownVersionError
from meterbox.witness import MAX_HEAD_LEN, WitnessHead, parse_head

INSTANCE = "00112233445566778899aabbccddeeff"
HASH = "ab" * 32

_heads = st.builds(
    WitnessHead,
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.binary(min_size=32, max_size=32),
)


@given(_heads)
def test_every_head_round_trips_through_its_header_value(head: WitnessHead) -> None:
    value = head.to_header()
    assert len(value) <= MAX_HEAD_LEN
    assert parse_head(value) == head
    assert parse_head(value).to_header() == value


@given(st.text(max_size=300))
def test_any_text_parses_to_its_own_value_or_raises_format_error(value: str) -> None:
    error: FormatError | None = None
    try:
        head = parse_head(value)
    except FormatError as exc:
        error = exc
    if error is None:
        assert head.to_header() == value
    else:
        assert error.expected and error.found is not None
        assert len(error.render()) < 600  # what was sent is shown bounded


@given(
    st.lists(
        st.sampled_from(["1", INSTANCE, "17", HASH, "", ":", "0", "01", "X", HASH.upper()]),
        max_size=8,
    )
)
def test_near_misses_are_refused_unless_exactly_the_grammar(parts: list[str]) -> None:
    value = ":".join(parts)
    try:
        head = parse_head(value)
    except FormatError:
        return
    assert head.to_header() == value


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"1:{INSTANCE}:17", "four ':'-separated"),
        (f"1:{INSTANCE}:017:{HASH}", "leading zeros"),
        (f"1:{INSTANCE}:-1:{HASH}", "not a decimal"),
        (f"1:{INSTANCE}:١٢:{HASH}", "not a decimal"),  # Arabic-Indic digits
        (f"1:{INSTANCE}:{2**63}:{HASH}", "out of range"),
        (f"1:{INSTANCE}:99999999999999999999:{HASH}", "out of range"),
        (f"1:{INSTANCE}:17:{HASH.upper()}", "64 lower-case hex"),
        (f"1:{INSTANCE}:17:{HASH[:-2]}", "64 lower-case hex"),
        (f"1:{INSTANCE.upper()}:17:{HASH}", "instance id"),
        (f"1:{INSTANCE}:17:{HASH}" + " " * 10, "64 lower-case hex"),
        ("x" * (MAX_HEAD_LEN + 1), "too long"),
    ],
)
def test_malformed_values_say_what_was_expected(value: str, problem: str) -> None:
    with pytest.raises(FormatError, match=problem) as caught:
        parse_head(value)
    assert "Expected" in caught.value.render()
    assert "Found" in caught.value.render()


def test_an_unknown_version_is_its_own_error() -> None:
    with pytest.raises(UnknownVersionError, match="version 1"):
        parse_head(f"2:{INSTANCE}:17:{HASH}")


def test_heads_are_valid_at_construction() -> None:
    with pytest.raises(FormatError, match="32-byte"):
        WitnessHead(INSTANCE, 1, b"short")
    with pytest.raises(FormatError, match="out of range"):
        WitnessHead(INSTANCE, True, bytes(32))  # a boolean is no seq
