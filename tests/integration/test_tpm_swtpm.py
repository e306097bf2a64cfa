"""The TPM anchor against a real software TPM (swtpm): counter, identity and attestations.

Every scenario of docs/spec/tpm-attestation.md's finding table is produced here from a
live TPM: a good attestation, replayed ones (old counter, old nonce, another head),
one from a foreign TPM, forged ones, a ledger older than the TPM, and a missing one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from meterbox.errors import ConfigError, StateError
from meterbox.tpm import (
    AttestationBundle,
    CounterVerdict,
    TpmAnchor,
    TpmCounterRollback,
    TpmDevice,
    TpmMissing,
    TpmMode,
    TpmPins,
    TpmQuoteForeign,
    TpmQuoteForged,
    TpmQuoteReplayed,
    check_credential_proof,
    decide_mode,
    judge_counter,
    judge_identity,
    make_credential_challenge,
    verify_attestation,
)
from support.tpm import Swtpm, SwtpmFactory, SwtpmMissing, manufacture_with_ek_cert

AUTH = b"counter-auth"
HEAD1 = bytes(range(32))
HEAD2 = bytes(range(32, 64))
NONCE1 = b"\x11" * 32
NONCE2 = b"\x22" * 32
SCRATCH_INDEX = 0x01004D43


def _enrolled(anchor: TpmAnchor) -> tuple[TpmPins, bytes]:
    """Advance, attest and enrol: the vendor's pins after a first good report."""
    value = anchor.advance(HEAD1)
    bundle = anchor.attest(HEAD1, NONCE1)
    result = verify_attestation(
        bundle, head=HEAD1, pins=TpmPins(), required=True, ledger_counter=value
    )
    assert result is not None
    return result.pins, bundle


def test_counter_created_increments_and_reads(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        info = dev.create_counter(SCRATCH_INDEX, AUTH)
        first = dev.read_counter(SCRATCH_INDEX, AUTH)
        for _ in range(5):
            dev.increment(SCRATCH_INDEX, AUTH)
        assert dev.read_counter(SCRATCH_INDEX, AUTH) == first + 5
        # swtpm leaves the platform hierarchy open, so the index is undeletable there.
        assert info.owner_deletable is False
        with pytest.raises(StateError, match="NV_UndefineSpace"):
            dev.delete_counter(SCRATCH_INDEX, AUTH)


def test_counter_survives_swtpm_restart_with_same_state(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        for _ in range(3):
            value = anchor.advance(HEAD1)
        identity = anchor.identity()
    swtpm.restart()
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor(dev, AUTH)
        assert anchor.read() == value
        assert judge_identity(identity, anchor.identity()) == []
        assert anchor.advance(HEAD2) == value + 1


def test_counter_defined_again_starts_above_every_value_held(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        info = dev.create_counter(SCRATCH_INDEX, AUTH, platform=False)
        assert info.owner_deletable is True
        for _ in range(10):
            dev.increment(SCRATCH_INDEX, AUTH)
        held = dev.read_counter(SCRATCH_INDEX, AUTH)
        dev.delete_counter(SCRATCH_INDEX, AUTH)
        again = dev.create_counter(SCRATCH_INDEX, AUTH, platform=False)
        assert dev.read_counter(SCRATCH_INDEX, AUTH) > held
        # Same template, same Name: the value, not the Name, shows the re-creation.
        assert again.name == info.name


def test_init_adopts_an_existing_counter_without_lowering_it(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        value = anchor.advance(HEAD1)
        again = TpmAnchor.initialise(dev, AUTH)
        assert again.read() == value
        assert again.identity() == anchor.identity()


def test_restored_copy_of_ledger_state_is_a_rollback_at_open(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        copied = anchor.advance(HEAD1)  # the value a backup of the data directory holds
        anchor.advance(HEAD2)
        latest = anchor.advance(HEAD2)
        assert judge_counter(latest, None, anchor.read()) is CounterVerdict.IN_STEP
        assert judge_counter(copied, None, anchor.read()) is CounterVerdict.ROLLBACK
        # A crash between the announced advance and the commit is not a rollback.
        pending = anchor.advance(HEAD2)
        assert judge_counter(latest, pending, anchor.read()) is CounterVerdict.RESYNC


def test_second_swtpm_is_a_foreign_tpm(swtpm_factory: SwtpmFactory) -> None:
    first, second = swtpm_factory(), swtpm_factory()
    with TpmDevice(first.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, _ = _enrolled(anchor)
        identity = anchor.identity()
    with TpmDevice(second.tcti) as dev:
        other = TpmAnchor.initialise(dev, AUTH)
        assert set(judge_identity(identity, other.identity())) == {"ek_name", "ak_name"}
        value = other.advance(HEAD2)
        bundle = other.attest(HEAD2, NONCE2)
    with pytest.raises(TpmQuoteForeign) as err:
        verify_attestation(bundle, head=HEAD2, pins=pins, required=True, ledger_counter=value)
    assert err.value.code == "tpm.quote.foreign"


def test_good_attestation_enrols_then_verifies_with_pins(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, _ = _enrolled(anchor)
        value = anchor.advance(HEAD2)
        bundle = anchor.attest(HEAD2, NONCE2)
    result = verify_attestation(
        bundle, head=HEAD2, pins=pins, required=False, ledger_counter=value, nonce=NONCE2
    )
    assert result is not None
    assert result.finding == "tpm.quote.ok"
    assert result.counter == value
    assert result.enrolled_now is False
    assert result.pins.last_counter == value
    assert result.pins.ak_name == pins.ak_name


def test_replayed_attestations_are_each_replayed(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, old_bundle = _enrolled(anchor)
        value = anchor.advance(HEAD2)
        fresh = anchor.attest(HEAD2, NONCE2)
    # The first report's attestation presented again: its counter has not moved on.
    with pytest.raises(TpmQuoteReplayed, match="not advanced"):
        verify_attestation(old_bundle, head=HEAD1, pins=pins, required=True)
    # A fresh read, but answering an older challenge than the one the vendor issued.
    with pytest.raises(TpmQuoteReplayed, match="old challenge"):
        verify_attestation(fresh, head=HEAD2, pins=pins, required=True, nonce=b"\x33" * 32)
    # A genuine attestation attached to a report that ends at another head.
    with pytest.raises(TpmQuoteReplayed, match="another ledger head"):
        verify_attestation(fresh, head=HEAD1, pins=pins, required=True)
    # A ledger further on than the attested counter: the attestation is older than it.
    with pytest.raises(TpmQuoteReplayed, match="older than the report"):
        verify_attestation(fresh, head=HEAD2, pins=pins, required=True, ledger_counter=value + 1)


def test_ledger_below_the_tpm_counter_is_a_rollback(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, _ = _enrolled(anchor)
        restored = anchor.advance(HEAD2)  # what the restored copy's ledger committed to
        anchor.advance(HEAD2)
        anchor.advance(HEAD2)
        bundle = anchor.attest(HEAD2, NONCE2)
    with pytest.raises(TpmCounterRollback) as err:
        verify_attestation(bundle, head=HEAD2, pins=pins, required=True, ledger_counter=restored)
    assert err.value.code == "tpm.counter.rollback"


def _reencode(bundle: bytes, **changes: object) -> bytes:
    parsed = AttestationBundle.from_bytes(bundle)
    fields = {k: getattr(parsed, k) for k in parsed.__dataclass_fields__}
    fields.update(changes)
    return AttestationBundle(**fields).to_bytes()  # type: ignore[arg-type]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_forged_attestations_are_each_forged(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, _ = _enrolled(anchor)
        value = anchor.advance(HEAD2)
        good = anchor.attest(HEAD2, NONCE2)
    parsed = AttestationBundle.from_bytes(good)
    forgeries = {
        "counter field raised": _reencode(good, counter=value + 100),
        "counter inside the signed bytes": _reencode(
            good, attest=_flip(parsed.attest, len(parsed.attest) - 1)
        ),
        "signature bit flipped": _reencode(
            good, signature=_flip(parsed.signature, len(parsed.signature) - 1)
        ),
        "nonce swapped after signing": _reencode(good, nonce=b"\x44" * 32),
        "truncated attest": _reencode(good, attest=parsed.attest[:-3]),
        "not msgpack": b"\xc1" + good,
    }
    for what, forged in forgeries.items():
        with pytest.raises(TpmQuoteForged) as err:
            verify_attestation(forged, head=HEAD2, pins=pins, required=True, ledger_counter=value)
        assert err.value.code == "tpm.quote.forged", what


def test_software_key_claiming_to_be_the_ak_is_foreign_once_pinned(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        pins, _ = _enrolled(anchor)
        value = anchor.advance(HEAD2)
        good = AttestationBundle.from_bytes(anchor.attest(HEAD2, NONCE2))
    # Same AK template, a software key's point, the TPM's attest bytes re-signed.
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    ak = good.ak_public
    fake_ak = ak[:-68] + b"\x00\x20" + numbers.x.to_bytes(32, "big")
    fake_ak += b"\x00\x20" + numbers.y.to_bytes(32, "big")
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(good.attest, ec.ECDSA(hashes.SHA256())))
    sig = b"\x00\x18\x00\x0b\x00\x20" + r.to_bytes(32, "big") + b"\x00\x20" + s.to_bytes(32, "big")
    forged = _reencode(good.to_bytes(), ak_public=fake_ak, signature=sig)
    with pytest.raises(TpmQuoteForeign, match="attestation key"):
        verify_attestation(forged, head=HEAD2, pins=pins, required=True, ledger_counter=value)


def test_missing_attestation_where_required_or_enrolled(swtpm: Swtpm) -> None:
    with pytest.raises(TpmMissing) as err:
        verify_attestation(None, head=HEAD1, pins=TpmPins(), required=True)
    assert err.value.code == "tpm.missing"
    with TpmDevice(swtpm.tcti) as dev:
        pins, _ = _enrolled(TpmAnchor.initialise(dev, AUTH))
    # Once enrolled, dropping the TPM would hide a rollback: required or not.
    with pytest.raises(TpmMissing):
        verify_attestation(None, head=HEAD2, pins=pins, required=False)
    assert verify_attestation(None, head=HEAD2, pins=TpmPins(), required=False) is None


def test_ek_certificate_checked_against_the_manufacturer_ca(
    tmp_path: Path, swtpm_factory: SwtpmFactory
) -> None:
    roots_paths = manufacture_with_ek_cert(tmp_path / "state", tmp_path / "ca")
    roots = [x509.load_pem_x509_certificate(p.read_bytes()) for p in roots_paths]
    tpm = swtpm_factory(tmp_path / "state")
    with TpmDevice(tpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        assert anchor.identity()["ek_cert"] is True
        value = anchor.advance(HEAD1)
        bundle = anchor.attest(HEAD1, NONCE1)
    result = verify_attestation(
        bundle, head=HEAD1, pins=TpmPins(), required=True, ledger_counter=value, ek_roots=roots
    )
    assert result is not None
    assert result.ek_certified is True
    unchecked = verify_attestation(bundle, head=HEAD1, pins=TpmPins(), required=True)
    assert unchecked is not None
    assert unchecked.ek_certified is False
    other_ca = manufacture_with_ek_cert(tmp_path / "other-state", tmp_path / "other-ca")
    strangers = [x509.load_pem_x509_certificate(p.read_bytes()) for p in other_ca]
    # Not chaining is reported, not raised: whether it rejects is the vendor's policy
    # (tpm.ek.untrusted, critical only under --require-tpm; vendorkit/_tpm_check.py).
    foreign = verify_attestation(
        bundle, head=HEAD1, pins=TpmPins(), required=True, ek_roots=strangers
    )
    assert foreign is not None
    assert foreign.ek_certified is False
    assert "does not chain to a configured TPM manufacturer CA" in (foreign.ek_cert_problem or "")


def test_missing_swtpm_binary_fails_rather_than_skips(tmp_path: Path) -> None:
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = str(tmp_path)
    try:
        with pytest.raises(SwtpmMissing, match="install-system-deps"):
            Swtpm(tmp_path / "state")
    finally:
        os.environ["PATH"] = path
    # The same through pytest: a test that needs the fixture fails, it is not skipped.
    test = Path(__file__).resolve()
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{test}::test_counter_created_increments_and_reads"],
        capture_output=True, text=True, env=env, cwd=test.parent.parent.parent, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 error" in proc.stdout or "1 failed" in proc.stdout, proc.stdout
    assert "skipped" not in proc.stdout, proc.stdout


def test_vector_capture_script_reproduces_every_declared_result(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "vectors.tpm.capture", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root / "tests",
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fresh = json.loads((tmp_path / "invalid.json").read_text())["cases"]
    checked_in = json.loads((root / "tests/vectors/tpm/invalid.json").read_text())["cases"]
    # New captures differ in bytes (fresh seeds, ECDSA nonces) but not in meaning.
    assert [(c["name"], c["expected"]) for c in fresh] == [
        (c["name"], c["expected"]) for c in checked_in
    ]


def test_probe_finds_swtpm_and_reports_an_absent_tpm(swtpm: Swtpm, tmp_path: Path) -> None:
    assert TpmDevice.probe(swtpm.tcti).found is True
    absent = TpmDevice.probe(f"device:{tmp_path / 'tpmrm0'}")
    assert absent.found is False
    with pytest.raises(ConfigError, match="required but none answered"):
        decide_mode(TpmMode.REQUIRE, absent)
    assert decide_mode(TpmMode.AUTO, absent).use_tpm is False


def test_wrong_counter_auth_is_a_state_error_naming_the_auth(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        TpmAnchor.initialise(dev, AUTH)
    with TpmDevice(swtpm.tcti) as dev:
        anchor = TpmAnchor(dev, b"not the auth")
        with pytest.raises(StateError, match="authValue"):
            anchor.advance(HEAD1)


def test_opening_an_anchor_on_a_tpm_without_the_counter_is_refused(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev, pytest.raises(StateError, match="not defined"):
        TpmAnchor(dev, AUTH)


def test_attestation_key_handle_held_by_another_key_is_refused(swtpm: Swtpm) -> None:
    with TpmDevice(swtpm.tcti) as dev:
        dev.attestation_key(0x81004D50)
        # The same handle as an AK is fine; a different persistent key there is not.
        assert dev.attestation_key(0x81004D50) == dev.attestation_key(0x81004D50)
        other_handle = 0x81004D51
        from tpm2_pytss import ESYS_TR as _ESYS_TR
        from tpm2_pytss import TPM2B_PUBLIC as _PUB
        from tpm2_pytss import TPMA_OBJECT
        from tpm2_pytss import TPMT_PUBLIC as _T

        esys = dev._esys
        # An unrestricted ECC signing key: it could sign anything, so it is no AK.
        signer = _T.parse(
            "ecc256:ecdsa-sha256",
            objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
            | TPMA_OBJECT.FIXEDTPM
            | TPMA_OBJECT.FIXEDPARENT
            | TPMA_OBJECT.SENSITIVEDATAORIGIN
            | TPMA_OBJECT.USERWITHAUTH,
        )
        handle, *_ = esys.create_primary(None, _PUB(publicArea=signer), _ESYS_TR.OWNER)
        esys.evict_control(_ESYS_TR.OWNER, handle, other_handle)
        esys.flush_context(handle)
        with pytest.raises(StateError, match="another key occupies"):
            dev.attestation_key(other_handle)


def _ak_name(bundle: bytes) -> bytes:
    from meterbox.tpm import _structs

    return _structs.parse_public(AttestationBundle.from_bytes(bundle).ak_public).name


@pytest.mark.parametrize("with_ek_cert", [False, True], ids=["ecc_ek", "rsa_ek_with_cert"])
def test_credential_activation_binds_the_pinned_ak_to_the_ek(
    tmp_path: Path, swtpm_factory: SwtpmFactory, with_ek_cert: bool
) -> None:
    state = tmp_path / "state"
    if with_ek_cert:
        manufacture_with_ek_cert(state, tmp_path / "ca")
    tpm = swtpm_factory(state)
    secret = bytes(range(32))
    with TpmDevice(tpm.tcti) as dev:
        anchor = TpmAnchor.initialise(dev, AUTH)
        bundle = anchor.attest(HEAD1, NONCE1)
        ek_public = AttestationBundle.from_bytes(bundle).ek_public
        ak_name = _ak_name(bundle)
        challenge = make_credential_challenge(ek_public, ak_name, secret)
        proof = anchor.activate_credential(challenge)
    check_credential_proof(secret, ak_name, proof)
    with pytest.raises(TpmQuoteForeign, match="does not match"):
        check_credential_proof(b"\x00" * 32, ak_name, proof)
    with pytest.raises(TpmQuoteForeign, match="did not answer"):
        check_credential_proof(secret, ak_name, None)


def test_credential_challenge_for_another_tpm_cannot_be_answered(
    swtpm_factory: SwtpmFactory,
) -> None:
    first, second = swtpm_factory(), swtpm_factory()
    with TpmDevice(first.tcti) as dev:
        genuine = TpmAnchor.initialise(dev, AUTH)
        ak_name = _ak_name(genuine.attest(HEAD1, NONCE1))
    with TpmDevice(second.tcti) as dev:
        other = TpmAnchor.initialise(dev, AUTH)
        other_ek = AttestationBundle.from_bytes(other.attest(HEAD1, NONCE1)).ek_public
    # A bundle pairing the first TPM's AK with the second TPM's EK: the challenge goes to
    # the EK it names, and the first TPM (holding the AK) cannot open it.
    challenge = make_credential_challenge(other_ek, ak_name, b"\x07" * 32)
    with TpmDevice(first.tcti) as dev:
        genuine = TpmAnchor(dev, AUTH)
        with pytest.raises(StateError, match="ActivateCredential"):
            genuine.activate_credential(challenge)
    # And the second TPM holds the EK but not that AK.
    with TpmDevice(second.tcti) as dev, pytest.raises(StateError, match="another attestation"):
        TpmAnchor(dev, AUTH).activate_credential(challenge)
