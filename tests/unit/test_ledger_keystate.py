"""The key state file (chain.key, version 2) and the version 2 record header, as formats.

Property tests: every key state and header round-trips; a slot with any byte changed
is empty, never a different key state; any 384 bytes either parse to a key state of a
valid slot or are refused with a StateError; a torn write of the next slot leaves the
previous key state current.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import StateError
from meterbox.ledger._format import HEADER_V1_LEN, HEADER_V2_LEN, Header
from meterbox.ledger._keystate import FILE_LEN, SLOT_LEN, KeyState, parse

U32 = st.integers(min_value=0, max_value=2**32 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)
KEY = st.binary(min_size=32, max_size=32)
STATES = st.builds(KeyState, U64, U32, U32, U64, KEY, KEY, KEY, KEY)
PATH = Path("chain.key")


@given(STATES)
def test_a_key_state_round_trips(state: KeyState) -> None:
    packed = state.pack()
    assert len(packed) == SLOT_LEN
    assert KeyState.unpack(packed) == state


@given(STATES, st.data())
def test_a_slot_with_any_byte_changed_is_empty(state: KeyState, data: st.DataObject) -> None:
    packed = bytearray(state.pack())
    pos = data.draw(st.integers(min_value=0, max_value=SLOT_LEN - 1))
    packed[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    assert KeyState.unpack(bytes(packed)) is None


@settings(max_examples=300)
@given(st.binary(min_size=FILE_LEN, max_size=FILE_LEN))
def test_any_file_bytes_parse_to_a_valid_slot_or_are_refused(data: bytes) -> None:
    slots = [KeyState.unpack(data[i * SLOT_LEN : (i + 1) * SLOT_LEN]) for i in (0, 1)]
    if slots == [None, None]:
        with pytest.raises(StateError, match="chain key is damaged"):
            parse(data, PATH)
        return
    state, slot = parse(data, PATH)
    assert KeyState.unpack(data[slot * SLOT_LEN : (slot + 1) * SLOT_LEN]) == state


@given(st.binary(max_size=FILE_LEN * 2).filter(lambda b: len(b) != FILE_LEN))
def test_a_file_of_the_wrong_length_is_refused(data: bytes) -> None:
    with pytest.raises(StateError, match="damaged"):
        parse(data, PATH)


@given(STATES, STATES, st.data())
def test_a_torn_write_of_the_next_slot_leaves_the_previous_state(
    old: KeyState, new: KeyState, data: st.DataObject
) -> None:
    old = KeyState(5, *_fields(old)[1:])
    new = KeyState(6, *_fields(new)[1:])
    # Slot 0 holds the current state; the next one goes to slot 1 and is torn: a prefix
    # of it reached the disk, the rest is what slot 1 held before (zeros, or garbage).
    cut = data.draw(st.integers(min_value=0, max_value=SLOT_LEN - 1))
    rest = data.draw(st.sampled_from([b"\x00", b"\xff"])) * (SLOT_LEN - cut)
    torn = new.pack()[:cut] + rest
    state, slot = parse(old.pack() + torn, PATH)
    assert (state, slot) == (old, 0)
    # Once whole, the higher generation wins, whichever slot it is in.
    assert parse(old.pack() + new.pack(), PATH) == (new, 1)
    assert parse(new.pack() + old.pack(), PATH) == (new, 0)


def _fields(state: KeyState) -> tuple[object, ...]:
    return (
        state.generation,
        state.epoch,
        state.batch,
        state.last_seq,
        state.last_hash,
        state.record_key,
        state.batch_key,
        state.next_epoch_key,
    )


@given(
    st.integers(min_value=0, max_value=255),
    U32,
    U64,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    U64,
    U32,
    st.integers(min_value=0, max_value=255),
)
def test_a_version_2_header_round_trips(
    rtype: int, epoch: int, seq: int, wall: int, mono: int, batch: int, flags: int
) -> None:
    header = Header(2, rtype, epoch, seq, wall, mono, batch, flags)
    packed = header.pack()
    assert len(packed) == HEADER_V2_LEN == header.size
    assert Header.unpack(packed + b"body") == header


@given(st.integers(min_value=0, max_value=255), U32, U64)
def test_a_version_1_header_round_trips_with_batch_and_flags_zero(
    rtype: int, epoch: int, seq: int
) -> None:
    header = Header(1, rtype, epoch, seq, 1, 2)
    packed = header.pack()
    assert len(packed) == HEADER_V1_LEN
    assert Header.unpack(packed) == header
    assert (header.batch, header.flags) == (0, 0)
