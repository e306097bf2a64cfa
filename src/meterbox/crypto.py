"""Every cryptographic primitive meterbox uses, built only from ``cryptography``.

Nothing here is home-made: HPKE (RFC 9180) seals ledger epoch keys to the vendor,
AES-256-GCM seals records, HKDF-SHA256 ratchets and derives keys, Ed25519 signs
licenses, receipts, top-ups and reports, SHA-256 chains records. Comparisons of
secrets are constant-time. Failures raise :class:`VerificationError`; no function
returns a boolean for "did it verify".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from meterbox.errors import FormatError, VerificationError

KEY_LEN: Final = 32
HASH_LEN: Final = 32
TAG_LEN: Final = 16
KEY_ID_LEN: Final = 8
#: HPKE ciphersuite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
HPKE_SUITE: Final = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)

__all__ = [
    "HASH_LEN",
    "AeadKey",
    "KEY_ID_LEN",
    "KEY_LEN",
    "TAG_LEN",
    "aead_open",
    "aead_seal",
    "b64d",
    "b64e",
    "constant_time_equal",
    "ed25519_private_from_raw",
    "ed25519_public_from_raw",
    "ed25519_raw_private",
    "ed25519_raw_public",
    "hkdf",
    "hkdf_expand",
    "hmac_sha256",
    "hpke_open",
    "hpke_seal",
    "key_id",
    "random_bytes",
    "sha256",
    "sign",
    "verify_signature",
    "x25519_private_from_raw",
    "x25519_public_from_raw",
    "x25519_raw_private",
    "x25519_raw_public",
]


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def sha256(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.digest()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def hkdf(secret: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-SHA256 (RFC 5869) with an empty salt: ``secret`` is already uniformly random."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def hkdf_expand(prk: bytes, info: bytes, length: int = KEY_LEN) -> bytes:
    """HKDF-Expand-SHA256 (RFC 5869 section 2.3) alone, for a ``prk`` that is already a
    uniformly random key (section 3.3: the extract step may then be skipped)."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=length, info=info).derive(prk)


def hmac_sha256(key: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of the concatenation of ``parts``."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    for part in parts:
        mac.update(part)
    return mac.finalize()


class AeadKey:
    """An AES-256-GCM key set up once and used for many records (no per-call key setup)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise VerificationError(
                "authentication tag does not verify",
                expected="a record sealed under this ledger's key",
                found="a modified, forged or foreign record",
            ) from None


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise VerificationError(
            "authentication tag does not verify",
            expected="a record sealed under this ledger's key",
            found="a modified, forged or foreign record",
        ) from None


def hpke_seal(public_key: X25519PublicKey, plaintext: bytes, info: bytes) -> bytes:
    """Single-shot HPKE base mode; returns ``enc || ciphertext``."""
    return HPKE_SUITE.encrypt(plaintext, public_key, info=info)


def hpke_open(private_key: X25519PrivateKey, sealed: bytes, info: bytes) -> bytes:
    try:
        return HPKE_SUITE.decrypt(sealed, private_key, info=info)
    except (InvalidTag, ValueError):
        raise VerificationError(
            "HPKE ciphertext does not open",
            expected="a ciphertext sealed to this vendor key with matching context",
            found="one sealed to another key, or modified",
        ) from None


def key_id(public_raw: bytes) -> bytes:
    """Short stable identifier of a public key: the first 8 bytes of its SHA-256."""
    return sha256(b"meterbox key id v1\x00", public_raw)[:KEY_ID_LEN]


def sign(private_key: Ed25519PrivateKey, message: bytes) -> bytes:
    return private_key.sign(message)


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    try:
        public_key.verify(signature, message)
    except InvalidSignature:
        raise VerificationError(
            "signature does not verify",
            expected="an Ed25519 signature by the named key over these exact bytes",
            found="a signature by another key, or bytes changed after signing",
        ) from None


_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw
_RAW_PRIV = serialization.PrivateFormat.Raw
_NOENC = serialization.NoEncryption()


def ed25519_raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUB)


def ed25519_raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, _RAW_PRIV, _NOENC)


def x25519_raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(_RAW, _RAW_PUB)


def x25519_raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, _RAW_PRIV, _NOENC)


def _check_len(raw: bytes, what: str) -> None:
    if len(raw) != KEY_LEN:
        raise FormatError(
            f"{what} has the wrong length",
            expected=f"{KEY_LEN} bytes",
            found=f"{len(raw)} bytes",
        )


def ed25519_public_from_raw(raw: bytes) -> Ed25519PublicKey:
    _check_len(raw, "Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw)


def ed25519_private_from_raw(raw: bytes) -> Ed25519PrivateKey:
    _check_len(raw, "Ed25519 private key")
    return Ed25519PrivateKey.from_private_bytes(raw)


def x25519_public_from_raw(raw: bytes) -> X25519PublicKey:
    _check_len(raw, "X25519 public key")
    return X25519PublicKey.from_public_bytes(raw)


def x25519_private_from_raw(raw: bytes) -> X25519PrivateKey:
    _check_len(raw, "X25519 private key")
    return X25519PrivateKey.from_private_bytes(raw)


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, what: str = "base64 field") -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise FormatError(
            f"{what} is not valid base64",
            expected="standard base64 (RFC 4648) text",
            found=repr(text[:40]),
        ) from None
