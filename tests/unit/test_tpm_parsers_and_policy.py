"""TPM structure parsers, the bundle format and the pure TPM decisions, without a TPM.

Parsers get random bytes (hypothesis): they parse or raise FormatError, never anything
else. The verifier gets random and mutated bundles: it returns or raises a TpmFinding.
"""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import ConfigError, FormatError, StateError
from meterbox.tpm import (
    Anchor,
    AttestationBundle,
    CounterVerdict,
    CredentialChallenge,
    NullAnchor,
    TpmFinding,
    TpmMode,
    TpmPins,
    TpmProbe,
    _structs,
    decide_mode,
    judge_counter,
    judge_identity,
    qualifying_data,
    verify_attestation,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors" / "tpm"
FINDINGS = {
    "tpm.quote.ok",
    "tpm.quote.forged",
    "tpm.quote.replayed",
    "tpm.quote.foreign",
    "tpm.counter.rollback",
    "tpm.missing",
}
PARSERS = [
    _structs.parse_nv_attest,
    _structs.parse_public,
    _structs.parse_signature,
    _structs.parse_nv_public,
    AttestationBundle.from_bytes,
    CredentialChallenge.from_bytes,
]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda p: p.__qualname__)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_parse_or_raise_format_error(parse, data: bytes) -> None:  # type: ignore[no-untyped-def]
    # Any other exception (IndexError, struct.error, ...) fails the test.
    with contextlib.suppress(FormatError):
        parse(data)


def _good_case() -> dict[str, object]:
    cases = json.loads((VECTORS / "verify.json").read_text())["cases"]
    return next(c for c in cases if c["name"] == "enrol")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_vector_bundles_verify_or_raise_a_finding(data: st.DataObject) -> None:
    case = _good_case()
    bundle = bytearray(bytes.fromhex(str(case["bundle"])))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(bundle) - 1))
        bundle[at] = data.draw(st.integers(0, 255))
    try:
        verify_attestation(
            bytes(bundle), head=bytes.fromhex(str(case["head"])), pins=TpmPins(), required=True
        )
    except TpmFinding as exc:
        code = exc.code
    else:
        code = "tpm.quote.ok"
    assert code in FINDINGS


@pytest.mark.parametrize("parse", PARSERS[:4], ids=lambda p: p.__qualname__)
def test_oversized_structure_is_refused_before_parsing(parse) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FormatError, match="too long"):
        parse(b"\x00" * (_structs.MAX_STRUCTURE + 1))


def test_credential_proof_of_the_wrong_shape_is_forged() -> None:
    from meterbox.tpm import TpmQuoteForged, check_credential_proof, credential_proof

    ak_name = b"\x00\x0b" + b"\x01" * 32
    proof = credential_proof(b"\x02" * 32, ak_name)
    check_credential_proof(b"\x02" * 32, ak_name, proof)
    with pytest.raises(TpmQuoteForged, match="wrong length"):
        check_credential_proof(b"\x02" * 32, ak_name, proof[:-1])
    assert proof != credential_proof(b"\x02" * 32, b"\x00\x0b" + b"\x03" * 32)


def test_tpm2b_length_beyond_maximum_is_a_format_error() -> None:
    header = struct.pack(">IH", _structs.TPM_GENERATED_VALUE, _structs.TPM_ST_ATTEST_NV)
    with pytest.raises(FormatError, match="qualifiedSigner is too long"):
        _structs.parse_nv_attest(header + struct.pack(">H", 67) + b"\x00" * 67)


def test_attest_with_wrong_magic_is_refused() -> None:
    with pytest.raises(FormatError, match="TPM_GENERATED_VALUE"):
        _structs.parse_nv_attest(b"\x00" * 64)


def test_qualifying_data_commits_to_nonce_and_head() -> None:
    a = qualifying_data(b"\x01" * 32, b"\x02" * 32)
    assert a != qualifying_data(b"\x01" * 32, b"\x03" * 32)
    assert a != qualifying_data(b"\x02" * 32, b"\x02" * 32)
    assert len(a) == 32
    with pytest.raises(FormatError, match="wrong length"):
        qualifying_data(b"\x01" * 31, b"\x02" * 32)


def test_bundle_round_trips_and_rejects_unknown_version() -> None:
    bundle = AttestationBundle(b"a", b"s", b"k", b"e", None, b"n", 7, b"\x01" * 32, b"\x02" * 32)
    assert AttestationBundle.from_bytes(bundle.to_bytes()) == bundle
    import msgpack

    raw = msgpack.unpackb(bundle.to_bytes())
    raw["v"] = 2
    with pytest.raises(FormatError, match="unknown version"):
        AttestationBundle.from_bytes(msgpack.packb(raw))
    raw["v"] = 1
    raw["extra"] = 1
    with pytest.raises(FormatError, match="wrong fields"):
        AttestationBundle.from_bytes(msgpack.packb(raw))


@pytest.mark.parametrize(
    ("mode", "found", "use"),
    [
        (TpmMode.AUTO, True, True),
        (TpmMode.AUTO, False, False),
        (TpmMode.REQUIRE, True, True),
        (TpmMode.OFF, True, False),
        (TpmMode.OFF, False, False),
    ],
)
def test_tpm_mode_decides_from_what_the_probe_found(mode: TpmMode, found: bool, use: bool) -> None:
    probe = TpmProbe("device:/dev/tpmrm0", found, "answered" if found else "no such file")
    decision = decide_mode(mode, probe)
    assert decision.use_tpm is use
    assert decision.tcti == (probe.tcti if use else None)


def test_tpm_required_but_absent_is_a_config_error_with_a_hint() -> None:
    with pytest.raises(ConfigError, match="required but none answered") as err:
        decide_mode(TpmMode.REQUIRE, TpmProbe("device:/dev/tpmrm0", False, "no such file"))
    assert err.value.hint is not None
    assert "--tpm auto" in err.value.hint


def test_tpm_mode_parses_its_three_words_only() -> None:
    assert TpmMode.parse(" Require ") is TpmMode.REQUIRE
    with pytest.raises(ConfigError, match="unknown TPM mode"):
        TpmMode.parse("maybe")


@pytest.mark.parametrize(
    ("recorded", "pending", "tpm", "verdict"),
    [
        (5, None, 5, CounterVerdict.IN_STEP),
        (5, 6, 5, CounterVerdict.IN_STEP),
        (5, 6, 6, CounterVerdict.RESYNC),
        (5, None, 6, CounterVerdict.ROLLBACK),
        (5, 6, 7, CounterVerdict.ROLLBACK),
        (5, None, 4, CounterVerdict.AHEAD),
    ],
)
def test_counter_at_open_is_judged_against_the_ledger(
    recorded: int, pending: int | None, tpm: int, verdict: CounterVerdict
) -> None:
    assert judge_counter(recorded, pending, tpm) is verdict


def test_identity_comparison_names_the_fields_that_differ() -> None:
    a = {"ek_name": "00", "ak_name": "01", "nv_name": "02"}
    assert judge_identity(a, dict(a)) == []
    assert judge_identity(a, {**a, "ak_name": "ff"}) == ["ak_name"]
    with pytest.raises(FormatError, match="incomplete"):
        judge_identity(a, {"tpm": "none"})


def test_null_anchor_counts_nothing_and_refuses_to_attest() -> None:
    anchor = NullAnchor()
    assert isinstance(anchor, Anchor)
    assert anchor.present is False
    assert anchor.advance(b"\x00" * 32) == 0
    assert anchor.read() == 0
    assert anchor.identity() == {"tpm": "none"}
    with pytest.raises(StateError, match="no TPM"):
        anchor.attest(b"\x00" * 32, b"\x00" * 32)
    with pytest.raises(FormatError, match="wrong length"):
        anchor.advance(b"short")


def test_public_api_is_exactly_all() -> None:
    import meterbox.tpm as tpm

    public = {n for n in dir(tpm) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(tpm, n)).__name__ == "module"}
    assert public - modules == set(tpm.__all__)
