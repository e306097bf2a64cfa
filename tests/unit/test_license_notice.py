"""License notices: the document round-trips, refuses bad payloads with clear errors, and
the standing rule never lets an old notice undo a newer one (property tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import FormatError, VerificationError
from meterbox.licenses import (
    ACTIONS,
    LicenseNotice,
    VendorPublicBundle,
    canonical_json,
    strict_loads,
)
from meterbox.licenses._envelope import seal
from meterbox.server._core.standing import Standing, apply
from meterbox.server._errors import LicenseAlreadyRevoked, NoticeOutOfOrder
from vectors.licenses.generate import KEY_A, KEY_STRANGER

BUNDLE = VendorPublicBundle((KEY_A.public,), KEY_A.key_id)
T0 = datetime(2025, 1, 1, tzinfo=UTC)
_NAME = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True)
_REASON = st.none() | st.text(
    st.characters(min_codepoint=0x20, blacklist_characters="\x7f", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=60,
)
notices = st.builds(
    LicenseNotice,
    notice_id=_NAME,
    license_id=_NAME,
    action=st.sampled_from(ACTIONS),
    sequence=st.integers(1, 2**31 - 1),
    issued=st.integers(0, 10**9).map(lambda s: T0 + timedelta(seconds=s)),
    reason=_REASON,
)


@settings(max_examples=200)
@given(notice=notices)
def test_a_notice_round_trips_through_its_signed_bytes(notice: LicenseNotice) -> None:
    data = notice.sign(KEY_A.signer())
    assert LicenseNotice.from_bytes(data, BUNDLE) == notice
    assert LicenseNotice.from_payload(notice.to_payload()) == notice


@settings(max_examples=200)
@given(
    notice=notices,
    key=st.sampled_from(("action", "sequence", "license_id", "notice_id", "issued", "reason")),
    value=st.one_of(
        st.none(), st.booleans(), st.integers(-5, 0), st.text(max_size=5), st.lists(st.none())
    ),
)
def test_a_damaged_payload_is_a_format_error_that_says_what_was_expected(
    notice: LicenseNotice, key: str, value: Any
) -> None:
    payload = {**notice.to_payload(), key: value}
    plain = (
        isinstance(value, str)
        and value
        and all(0x20 <= ord(c) != 0x7F and not 0xD800 <= ord(c) <= 0xDFFF for c in value)
    )
    # An absent reason is left out, never null: one encoding per notice.
    valid = (key == "reason" and plain) or (
        key in ("license_id", "notice_id")
        and isinstance(value, str)
        and value[:1].isalnum()
        and value.isascii()
        and all(c.isalnum() or c in "_.:-" for c in value)
    )
    if valid:
        # Only a value that is itself valid for the field parses.
        parsed = LicenseNotice.from_payload(payload)
        assert parsed.to_payload() == payload
        return
    with pytest.raises(FormatError) as info:
        LicenseNotice.from_payload(payload)
    assert info.value.expected and info.value.found is not None


@settings(max_examples=100)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_never_pass_as_a_notice(data: bytes) -> None:
    with pytest.raises((FormatError, VerificationError)):
        LicenseNotice.from_bytes(data, BUNDLE)


def test_a_notice_signed_by_a_stranger_or_edited_is_refused() -> None:
    notice = LicenseNotice("ntc_1", "lic_1", "suspend", 1, T0)
    with pytest.raises(VerificationError):
        LicenseNotice.from_bytes(notice.sign(KEY_STRANGER.signer()), BUNDLE)
    envelope = strict_loads(notice.sign(KEY_A.signer()), "notice")
    resealed = seal(
        "meterbox-license-notice/1", {**notice.to_payload(), "action": "resume"}, KEY_A.signer()
    )
    # A payload swapped under the old signature does not verify.
    swapped = dict(strict_loads(resealed, "notice"), signature=envelope["signature"])
    raw = canonical_json(swapped) + b"\n"
    with pytest.raises(VerificationError):
        LicenseNotice.from_bytes(raw, BUNDLE)


_ACTION_SEQS = st.lists(st.tuples(st.sampled_from(ACTIONS), st.integers(1, 30)), max_size=30)


@settings(max_examples=300)
@given(imports=_ACTION_SEQS)
def test_the_standing_is_decided_by_the_newest_notice_alone(imports: list[tuple[str, int]]) -> None:
    """Whatever the import order (replays included), the standing is the one of the
    highest-numbered notice imported, unless a revocation came first; a refused
    notice changes nothing."""
    standing: Standing | None = None
    best: tuple[int, str] | None = None
    revoked = False
    for action, seq in imports:
        try:
            standing = apply(
                standing,
                license_id="lic",
                notice_id=f"n{seq}",
                action=action,
                sequence=seq,
                reason=None,
                at=T0,
            )
        except LicenseAlreadyRevoked:
            assert revoked
            continue
        except NoticeOutOfOrder:
            assert best is not None and seq <= best[0]
            continue
        assert not revoked and (best is None or seq > best[0])
        best = (seq, action)
        revoked = action == "revoke"
    if best is None:
        assert standing is None
    else:
        assert standing is not None and standing.sequence == best[0]
        assert (
            standing.status
            == {"suspend": "suspended", "resume": "active", "revoke": "revoked"}[best[1]]
        )
        assert standing.grants == (best[1] == "resume")


def test_a_reason_that_cannot_be_encoded_is_refused_when_the_notice_is_built() -> None:
    # A lone surrogate has no UTF-8 form: refused at construction, not at signing.
    with pytest.raises(FormatError, match="not plain text"):
        LicenseNotice("ntc_1", "lic_1", "suspend", 1, T0, reason="unpaid \ud800")


def test_refusals_say_what_was_expected_and_what_to_do() -> None:
    first = apply(
        None, license_id="lic", notice_id="a", action="suspend", sequence=4, reason="x", at=T0
    )
    with pytest.raises(NoticeOutOfOrder) as old:
        apply(
            first, license_id="lic", notice_id="b", action="suspend", sequence=4, reason=None, at=T0
        )
    assert "above 4" in str(old.value) and old.value.hint
    gone = apply(
        first, license_id="lic", notice_id="c", action="revoke", sequence=5, reason=None, at=T0
    )
    with pytest.raises(LicenseAlreadyRevoked) as final:
        apply(
            gone, license_id="lic", notice_id="d", action="resume", sequence=9, reason=None, at=T0
        )
    assert "new license" in str(final.value)
