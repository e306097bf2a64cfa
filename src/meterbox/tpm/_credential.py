"""Credential activation: proof that the attestation key lives in the TPM that owns the EK.

An EK certificate says a genuine TPM with that endorsement key exists; it says nothing
about the AK a bundle names, because the EK cannot sign. TPM2_MakeCredential closes that
(TPM 2.0 Library Part 1, "Credential Protection"): the vendor encrypts a secret to the EK
so that the TPM releases it (TPM2_ActivateCredential) only when the key named in the
challenge is loaded in the same TPM. The exchange fits the offline report cycle:

1. report N carries a bundle (EK and AK public areas);
2. the vendor answers with :func:`make_credential_challenge` in receipt N and keeps the
   secret;
3. the server calls ``TpmAnchor.activate_credential`` on the challenge and report N+1
   carries :func:`credential_proof` of the released secret;
4. the vendor checks it with :func:`check_credential_proof`: the pinned AK is now bound
   to the EK (and, through the EK certificate, to a manufacturer).

Challenge format ``meterbox-tpm-credential/1``: a msgpack map ``{"v": 1, "ak_name": bin,
"blob": bin (TPM2B_ID_OBJECT, size included), "secret": bin (TPM2B_ENCRYPTED_SECRET,
size included)}``. The cryptography of MakeCredential (seed to the EK by RSA-OAEP or
ECDH, KDFa, AES-CFB, HMAC) is tpm2-pytss's ``make_credential``, itself built on
``cryptography``; this module only frames it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from meterbox.crypto import constant_time_equal
from meterbox.errors import FormatError
from meterbox.tpm import _structs as s
from meterbox.tpm._verify import TpmQuoteForeign, TpmQuoteForged

VERSION: Final = 1
SECRET_LEN: Final = 32
_PROOF_DOMAIN: Final = b"meterbox-tpm-credential/1 proof\x00"
_MAX_CHALLENGE: Final = 4096


@dataclass(frozen=True)
class CredentialChallenge:
    ak_name: bytes
    blob: bytes
    secret: bytes

    def to_bytes(self) -> bytes:
        out: bytes = msgpack.packb(
            {"v": VERSION, "ak_name": self.ak_name, "blob": self.blob, "secret": self.secret},
            use_bin_type=True,
        )
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> CredentialChallenge:
        value: Any = None
        if len(data) <= _MAX_CHALLENGE:
            try:
                value = msgpack.unpackb(data, raw=False, strict_map_key=True)
            except (ValueError, TypeError, msgpack.UnpackException):
                value = None
        if (
            not isinstance(value, dict)
            or value.get("v") != VERSION
            or set(value) != {"v", "ak_name", "blob", "secret"}
            or not all(isinstance(value[k], bytes) for k in ("ak_name", "blob", "secret"))
        ):
            raise FormatError(
                "TPM credential challenge is malformed",
                expected="a meterbox-tpm-credential/1 map (v, ak_name, blob, secret)",
                found=f"{len(data)} bytes that are not one",
                hint="the receipt's credential challenge is corrupt or of another version",
            )
        return cls(value["ak_name"], value["blob"], value["secret"])


def make_credential_challenge(ek_public: bytes, ak_name: bytes, secret: bytes) -> bytes:
    """The vendor's challenge: ``secret`` sealed to the EK for the key named ``ak_name``."""
    from tpm2_pytss import TPMT_PUBLIC
    from tpm2_pytss.utils import make_credential

    if len(secret) != SECRET_LEN:
        raise FormatError(
            "credential secret has the wrong length",
            expected=f"{SECRET_LEN} random bytes",
            found=f"{len(secret)} bytes",
            hint="draw the secret from a CSPRNG",
        )
    ek = s.parse_public(ek_public)
    if ek.attributes & s.OBJ_DECRYPT == 0:
        raise FormatError(
            "endorsement key cannot receive a credential",
            expected="a restricted decryption key (TCG EK template)",
            found=f"objectAttributes 0x{ek.attributes:08x}",
            hint="pass the bundle's ek_public",
        )
    public, _ = TPMT_PUBLIC.unmarshal(ek_public)
    blob, encrypted = make_credential(public, secret, ak_name)
    return CredentialChallenge(ak_name, blob.marshal(), encrypted.marshal()).to_bytes()


def credential_proof(secret: bytes, ak_name: bytes) -> bytes:
    """What the next report carries: an HMAC of the AK Name under the released secret."""
    return hmac.new(secret, _PROOF_DOMAIN + ak_name, hashlib.sha256).digest()


def check_credential_proof(secret: bytes, ak_name: bytes, proof: bytes | None) -> None:
    """Raise unless ``proof`` shows the TPM released ``secret`` for the key ``ak_name``.

    No proof, or one for another key, means the AK could not be activated with the EK:
    the bundle's AK and EK are not in the same TPM (``tpm.quote.foreign``). A proof of the
    wrong shape is ``tpm.quote.forged``.
    """
    if proof is None:
        raise TpmQuoteForeign(
            "TPM did not answer the credential challenge",
            expected="a credential proof in the report after the challenge",
            found="none",
            hint="the attestation key may not be in the TPM whose EK the bundle names",
        )
    if len(proof) != hashlib.sha256().digest_size:
        raise TpmQuoteForged(
            "TPM credential proof has the wrong length",
            expected="32 bytes",
            found=f"{len(proof)} bytes",
            hint="the report's credential proof is corrupt",
        )
    if not constant_time_equal(proof, credential_proof(secret, ak_name)):
        raise TpmQuoteForeign(
            "TPM credential proof does not match the challenge",
            expected="the HMAC of the AK Name under the secret sealed to the pinned EK",
            found=proof.hex(),
            hint="the attestation key is not in the TPM whose EK was challenged",
        )
