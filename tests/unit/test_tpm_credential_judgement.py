"""The vendor's pure judgement of TPM credential answers (docs/adr/0036).

The proofs here are made with the real :func:`meterbox.tpm.credential_proof`; the TPM
side (ActivateCredential on swtpm) is in tests/integration/test_tpm_credential_challenge.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meterbox.ledger import TpmCredential
from meterbox.tpm import credential_proof
from meterbox.vendorkit._tpm_check import (
    UNPROVEN_AFTER_REPORTS,
    CredentialState,
    CredentialVerdict,
    judge_credential,
)

AK = b"\x00\x0b" + b"\xa1" * 32
OTHER_AK = b"\x00\x0b" + b"\xb2" * 32
EK = b"ek-public"
SECRET = b"\x5e" * 32


def _new(ek: bytes, ak: bytes) -> tuple[bytes, bytes]:
    return b"\x77" * 32, b"challenge:" + ak


def _judge(
    state: CredentialState | None,
    answers: list[TpmCredential],
    *,
    required: bool = True,
    ak: bytes = AK,
) -> CredentialVerdict:
    return judge_credential(
        state,
        list(enumerate(answers)),
        ak_name=ak,
        ek_public=EK,
        required=required,
        new_challenge=_new,
    )


def _outstanding(reports: int = 0) -> CredentialState:
    return CredentialState(AK, SECRET, b"challenge", reports)


def _answer(proof: bytes | None = None, ak: bytes = AK, error: str | None = None) -> TpmCredential:
    return TpmCredential(receipt_id="rcpt_1", ak_name=ak.hex(), proof=proof, error=error)


def test_first_attested_report_is_challenged_without_a_finding() -> None:
    verdict = _judge(None, [])
    assert verdict.findings == ()
    assert verdict.challenge == b"challenge:" + AK
    assert verdict.state == CredentialState(AK, b"\x77" * 32, b"challenge:" + AK)


def test_the_right_proof_proves_the_key_and_ends_the_challenge() -> None:
    verdict = _judge(_outstanding(), [_answer(credential_proof(SECRET, AK))])
    assert verdict.findings == ()
    assert verdict.challenge is None
    assert verdict.state == CredentialState(AK, None, None, 0, proven=True)


@given(st.binary(min_size=32, max_size=32).filter(lambda p: p != credential_proof(SECRET, AK)))
def test_any_other_proof_is_forged_and_the_challenge_stays(proof: bytes) -> None:
    verdict = _judge(_outstanding(), [_answer(proof)])
    assert [(f.code, f.severity) for f in verdict.findings] == [("tpm.ak.forged", "critical")]
    assert verdict.challenge == b"challenge"
    assert verdict.state == _outstanding()


def test_a_proof_for_another_key_is_forged_even_once_proven() -> None:
    proven = CredentialState(AK, None, None, 0, proven=True)
    for state in (None, _outstanding(), proven):
        verdict = _judge(state, [_answer(credential_proof(SECRET, OTHER_AK), ak=OTHER_AK)])
        assert [f.code for f in verdict.findings] == ["tpm.ak.forged"], state


def test_an_answer_that_could_not_be_made_is_unproven_by_the_licence() -> None:
    for required, severity in ((True, "critical"), (False, "warning")):
        verdict = _judge(_outstanding(), [_answer(error="ActivateCredential failed")],
                         required=required)  # fmt: skip
        assert [(f.code, f.severity) for f in verdict.findings] == [("tpm.ak.unproven", severity)]
        assert verdict.challenge == b"challenge"


@given(st.integers(0, 10), st.booleans())
def test_no_answer_is_outstanding_until_the_limit(reports: int, required: bool) -> None:
    verdict = _judge(_outstanding(reports), [], required=required)
    assert verdict.challenge == b"challenge"
    assert verdict.state == _outstanding(reports + 1)
    (finding,) = verdict.findings
    if reports + 1 >= UNPROVEN_AFTER_REPORTS:
        assert (finding.code, finding.severity) == (
            "tpm.ak.unproven",
            "critical" if required else "warning",
        )
    else:
        assert (finding.code, finding.severity) == ("tpm.ak.outstanding", "info")


def test_a_proven_key_that_changed_is_challenged_again() -> None:
    """A re-enrolment pins another AK: the proof of the old one does not carry over."""
    old_proof = credential_proof(SECRET, AK)
    verdict = _judge(_outstanding(), [_answer(old_proof)], ak=OTHER_AK)
    assert verdict.findings == ()
    assert verdict.challenge == b"challenge:" + OTHER_AK
    assert verdict.state is not None and verdict.state.ak_name == OTHER_AK
    proven = CredentialState(AK, None, None, 0, proven=True)
    assert _judge(proven, [], ak=OTHER_AK).challenge == b"challenge:" + OTHER_AK
    assert _judge(proven, []).findings == ()
    assert _judge(proven, []).challenge is None


@given(st.binary(max_size=64), st.text(max_size=20), st.none() | st.binary(max_size=40))
def test_credential_records_round_trip(ak: bytes, receipt_id: str, proof: bytes | None) -> None:
    record = TpmCredential(receipt_id=receipt_id, ak_name=ak.hex(), proof=proof,
                           error=None if proof else "no TPM")  # fmt: skip
    assert TpmCredential.from_map(record.to_map()) == record


def test_a_server_that_cannot_answer_seals_why() -> None:
    """The server side without a TPM: the record says why, it never drops a challenge."""
    from meterbox.server._tpm import answer_challenge
    from meterbox.tpm import CredentialChallenge

    junk = answer_challenge(None, "rcpt_1", b"not a challenge")
    assert (junk.ak_name, junk.proof) == ("", None)
    assert junk.error is not None and "malformed" in junk.error
    challenge = CredentialChallenge(AK, b"blob", b"secret").to_bytes()
    none = answer_challenge(None, "rcpt_1", challenge)
    assert (none.ak_name, none.proof) == (AK.hex(), None)
    assert none.error is not None and "no TPM is attached" in none.error
    # The vendor reads either as "could not answer".
    verdict = _judge(_outstanding(), [none], required=False)
    assert [(f.code, f.severity) for f in verdict.findings] == [("tpm.ak.unproven", "warning")]
