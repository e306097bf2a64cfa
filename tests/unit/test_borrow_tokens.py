"""Borrow tokens (docs/spec/borrow.md): the checked-in vectors, their generator, and the
parser under hypothesis (round trips, arbitrary bytes, single-byte edits)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox import crypto, errors
from meterbox.client._borrow import lease_id_of
from meterbox.errors import FormatError, LicenseExpired, MeterboxError, VerificationError
from meterbox.licenses import MAX_BORROW_HOURS, BorrowToken, machine_digest
from vectors import data_files
from vectors.borrow import generate

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "borrow"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_bytes())
KEY = crypto.ed25519_public_from_raw(crypto.b64d((VECTORS / "instance.pub").read_text().strip()))


def _now(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.mark.parametrize("case", MANIFEST["valid"], ids=lambda c: c["file"])
def test_valid_tokens_verify_to_their_payload(case: dict[str, Any]) -> None:
    data = (VECTORS / case["file"]).read_bytes()
    token = BorrowToken.verify(
        data, instance_key=KEY, machine_code=case["machine_code"], now=_now(case["now"])
    )
    assert token.to_payload() == case["payload"]
    assert lease_id_of(data) == case["payload"]["lease_id"]


@pytest.mark.parametrize("case", MANIFEST["invalid"], ids=lambda c: c["file"])
def test_invalid_tokens_raise_their_error(case: dict[str, Any]) -> None:
    expected = getattr(errors, case["error"])
    with pytest.raises(expected) as info:
        BorrowToken.verify(
            (VECTORS / case["file"]).read_bytes(),
            instance_key=KEY,
            machine_code=case["machine_code"],
            now=_now(case["now"]),
        )
    assert type(info.value) is expected
    assert info.value.expected is not None and info.value.found is not None


def test_vectors_regenerate_byte_for_byte() -> None:
    assert generate.build() == data_files(VECTORS)


def test_a_token_is_refused_for_another_feature() -> None:
    data = (VECTORS / "valid/two-weeks.borrow").read_bytes()
    now = datetime(2026, 5, 5, tzinfo=UTC)
    with pytest.raises(VerificationError, match="another feature"):
        BorrowToken.verify(
            data, instance_key=KEY, machine_code=generate.MACHINE, now=now, feature="cfd"
        )


# ------------------------------------------------------------------ hypothesis
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
_TIMES = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@st.composite
def tokens(draw: st.DrawFn) -> BorrowToken:
    issued = draw(_TIMES)
    seconds = draw(st.integers(1, MAX_BORROW_HOURS * 3600))
    return BorrowToken(
        lease_id=draw(st.text(_B64URL, min_size=1, max_size=64)),
        feature=draw(_NAME),
        license_id=draw(_NAME),
        client_id=draw(
            st.text(st.characters(min_codepoint=0x20, exclude_categories=("Cc", "Cs")), min_size=1)
        ),
        instance_id=draw(st.binary(min_size=16, max_size=16)).hex(),
        machine=machine_digest(draw(st.text(min_size=1, max_size=40))),
        issued=issued,
        expires=issued + timedelta(seconds=seconds),
    )


@settings(max_examples=200, deadline=None)
@given(token=tokens())
def test_tokens_round_trip_and_verify_inside_their_window(token: BorrowToken) -> None:
    data = token.sign(generate.INSTANCE)
    key = generate.INSTANCE.private_key.public_key()
    assert BorrowToken.from_bytes(data, key) == token
    assert token.sign(generate.INSTANCE) == data  # one encoding per token
    assert lease_id_of(data) == token.lease_id


@settings(max_examples=200, deadline=None)
@given(
    token=tokens(),
    mine=st.text(min_size=1, max_size=40),
    other=st.text(min_size=1, max_size=40),
    offset=st.floats(0, 1),
)
def test_only_the_bound_machine_verifies_and_only_before_expiry(
    token: BorrowToken, mine: str, other: str, offset: float
) -> None:
    token = BorrowToken(**{**token.__dict__, "machine": machine_digest(mine)})
    data = token.sign(generate.INSTANCE)
    key = generate.INSTANCE.private_key.public_key()
    inside = min(
        token.issued + (token.expires - token.issued) * offset,
        token.expires - timedelta(microseconds=1),
    )
    assert BorrowToken.verify(data, instance_key=key, machine_code=mine, now=inside) == token
    if other != mine:
        with pytest.raises(VerificationError, match="another machine"):
            BorrowToken.verify(data, instance_key=key, machine_code=other, now=inside)
    with pytest.raises(LicenseExpired):
        BorrowToken.verify(data, instance_key=key, machine_code=mine, now=token.expires)


@settings(max_examples=300, deadline=None)
@given(blob=st.binary(max_size=600))
def test_arbitrary_bytes_raise_a_meterbox_error(blob: bytes) -> None:
    with pytest.raises((FormatError, VerificationError)):
        BorrowToken.from_bytes(blob, KEY)


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_single_byte_edit_is_refused(index: int, value: int) -> None:
    good = (VECTORS / "valid/two-weeks.borrow").read_bytes()
    at = index % len(good)
    edited = good[:at] + bytes([value]) + good[at + 1 :]
    if edited == good:
        return
    with pytest.raises(MeterboxError):
        BorrowToken.from_bytes(edited, KEY)
