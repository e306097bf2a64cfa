"""Pure checks of re-enrolment records, the re-enrolment plan, EK severities and CA files.

The swtpm-backed scenarios are in tests/integration/test_tpm_ek_and_reenrolment.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import ConfigError, FormatError
from meterbox.ledger import Record, RecordType, TpmReenrolled
from meterbox.server._tpm import AnchorNote, TpmSetup, plan_reenrolment
from meterbox.tpm import TpmMode, TpmPins, VerifiedAttestation, parse_ca_file
from meterbox.tpm import _structs as s
from meterbox.vendorkit._tpm_check import TpmReportCheck

OLD = {"ek": "000b" + "01" * 32, "ak": "000b" + "02" * 32, "nv": "000b" + "03" * 32}
NEW = {"ek": "000b" + "11" * 32, "ak": "000b" + "12" * 32, "nv": "000b" + "13" * 32}


def _rec(seq: int, rtype: RecordType, payload: dict[str, Any]) -> Record:
    return Record(seq, rtype, 0, 1_000 + seq, 1_000 + seq, payload)


def _moved(old_counter: int = 9, old_ak: str = OLD["ak"], new_counter: int = 1) -> Record:
    payload = TpmReenrolled(
        old_ek_name=OLD["ek"], old_ak_name=old_ak, old_nv_name=OLD["nv"],
        old_counter=old_counter, new_ek_name=NEW["ek"], new_ak_name=NEW["ak"],
        new_nv_name=NEW["nv"], new_counter=new_counter, reason="board swap",
    ).to_map()  # fmt: skip
    return _rec(10, RecordType.TPM_REENROLLED, payload)


def _anchor(seq: int, counter: int, nv: str) -> Record:
    return _rec(seq, RecordType.TPM_ANCHOR, {"c": counter, "n": nv, "w": "open"})


PINNED = TpmPins(bytes.fromhex(OLD["ak"]), bytes.fromhex(OLD["ek"]), bytes.fromhex(OLD["nv"]), 8)


def _run(records: list[Record], pins: TpmPins = PINNED) -> TpmReportCheck:
    check = TpmReportCheck(pins, required=True)
    for r in records:
        check.feed(r, acked=False)
    return check


def test_a_reenrolment_is_a_warning_and_moves_the_expected_tpm() -> None:
    check = _run([_anchor(9, 9, OLD["nv"]), _moved(), _anchor(11, 2, NEW["nv"])])
    assert {f.code: f.severity for f in check.findings} == {"tpm.reenrolled": "warning"}
    assert "board swap" in check.findings[0].message
    # The attestation is now verified against the new TPM, from its counter.
    assert check.pins == TpmPins(
        bytes.fromhex(NEW["ak"]), bytes.fromhex(NEW["ek"]), bytes.fromhex(NEW["nv"]), 1
    )


def test_anchors_on_the_new_counter_without_the_record_are_foreign() -> None:
    check = _run([_anchor(9, 9, OLD["nv"]), _anchor(11, 2, NEW["nv"])])
    assert {f.code for f in check.findings} == {"tpm.ledger.foreign"}


def test_a_reenrolment_from_an_unpinned_tpm_is_invalid() -> None:
    check = _run([_moved(old_ak="000b" + "ee" * 32)])
    assert {f.code: f.severity for f in check.findings} == {"tpm.anchor.invalid": "critical"}
    assert check.pins == PINNED


@given(st.integers(0, 2**40).filter(lambda c: c != 9))
def test_a_reenrolment_leaving_the_old_counter_elsewhere_is_a_gap(old_counter: int) -> None:
    check = _run([_anchor(9, 9, OLD["nv"]), _moved(old_counter=old_counter)])
    codes = {f.code: f.severity for f in check.findings}
    assert codes == {"tpm.counter.gap": "critical", "tpm.reenrolled": "warning"}


@pytest.mark.parametrize(
    "payload", [{"oe": "x"}, {**_moved().payload, "na": "not hex"}, {**_moved().payload, "nc": "1"}]
)
def test_a_malformed_reenrolment_is_invalid(payload: dict[str, Any]) -> None:
    check = _run([_rec(10, RecordType.TPM_REENROLLED, payload)])
    assert {f.code for f in check.findings} == {"tpm.anchor.invalid"}
    assert check.pins == PINNED


# -------------------------------------------------------------- the plan
def _setup(names: dict[str, str], counter: int | None = 1) -> TpmSetup:
    identity: dict[str, object] = {"tpm": "tpm2", "ek_name": names["ek"], "ak_name": names["ak"],
                                   "nv_name": names["nv"], "owner_deletable": False}  # fmt: skip
    return TpmSetup(TpmMode.REQUIRE, "swtpm:", "found", b"k" * 32, identity, counter)


OLD_CONFIG: dict[str, object] = {"identity": _setup(OLD).identity, "counter_at_init": 3}


def test_the_plan_takes_the_old_counter_from_the_note_or_the_init() -> None:
    note = AnchorNote(41, None, 7, "ab" * 32)
    assert plan_reenrolment(OLD_CONFIG, note, _setup(NEW), None).old_counter == 41
    planned = plan_reenrolment(OLD_CONFIG, None, _setup(NEW), "x" * 500)
    assert planned.old_counter == 3
    assert planned.reason == "x" * 200
    assert (planned.new_ak_name, planned.new_counter) == (NEW["ak"], 1)


def test_the_plan_refuses_no_old_tpm_no_new_tpm_and_the_same_tpm() -> None:
    with pytest.raises(ConfigError, match="no TPM to re-enrol from"):
        plan_reenrolment(None, None, _setup(NEW), None)
    with pytest.raises(ConfigError, match="no TPM to re-enrol from"):
        plan_reenrolment({"identity": {"tpm": "none"}}, None, _setup(NEW), None)
    with pytest.raises(ConfigError, match="no TPM to re-enrol on"):
        plan_reenrolment(OLD_CONFIG, None, _setup(NEW, counter=None), None)
    with pytest.raises(ConfigError, match="is the one the instance is enrolled with"):
        plan_reenrolment(OLD_CONFIG, None, _setup(OLD), None)


# ------------------------------------------------------------ EK severities
def _verified(certified: bool | None) -> VerifiedAttestation:
    return VerifiedAttestation(
        counter=5, pins=PINNED, enrolled_now=False, ek_certified=certified,
        ek_cert_problem=None if certified is None else "issuer CN=x does not chain",
        owner_deletable=False, clock=s.ClockInfo(0, 0, 0, True),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("certified", "required", "roots", "expected"),
    [
        (True, True, True, {}),
        (False, True, True, {"tpm.ek.untrusted": "critical"}),
        (False, False, True, {"tpm.ek.untrusted": "warning"}),
        (None, True, True, {"tpm.ek.missing": "critical"}),
        (None, False, True, {"tpm.ek.missing": "warning"}),
        # Without a configured CA set nothing is judged.
        (False, True, False, {}),
        (None, True, False, {}),
    ],
)
def test_ek_findings_by_certificate_license_and_ca_set(
    certified: bool | None, required: bool, roots: bool, expected: dict[str, str]
) -> None:
    check = TpmReportCheck(PINNED, required=required, ek_roots=[_ca()] if roots else [])
    found = {f.code: f.severity for f in check._ek_findings(_verified(certified))}
    assert found == expected


# ---------------------------------------------------------------- CA files
def _ca(*, ca: bool = True, extension: bool = True) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test TPM CA")])
    now = datetime(2026, 1, 1, tzinfo=UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=3650))
    )
    if extension:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    return builder.sign(key, hashes.SHA256())


def test_ca_files_in_pem_and_der_parse_and_leaves_are_refused() -> None:
    root = _ca()
    pem = root.public_bytes(serialization.Encoding.PEM)
    der = root.public_bytes(serialization.Encoding.DER)
    assert parse_ca_file(pem) == parse_ca_file(der)
    assert parse_ca_file(pem)[0].subject == "CN=Test TPM CA"
    assert len(parse_ca_file(pem + pem)) == 2
    for bad, words in [
        (_ca(ca=False), "cA = FALSE"),
        (_ca(extension=False), "no basicConstraints"),
    ]:
        with pytest.raises(FormatError, match=words):
            parse_ca_file(bad.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(FormatError, match=words):
            parse_ca_file(pem + bad.public_bytes(serialization.Encoding.PEM))


_PEM = _ca().public_bytes(serialization.Encoding.PEM)


@given(
    st.binary(max_size=300)
    | st.builds(lambda cut: _PEM[:cut], st.integers(0, len(_PEM)))
    | st.builds(lambda b, i: _PEM[:i] + b + _PEM[i:], st.binary(max_size=8), st.integers(0, 600))
)
def test_any_bytes_are_cas_or_a_format_error(data: bytes) -> None:
    try:
        cas = parse_ca_file(data)
    except FormatError as exc:
        problem = exc.problem
    else:
        assert cas and all(len(c.sha256) == 64 for c in cas)
        return
    assert "CA certificate" in problem
