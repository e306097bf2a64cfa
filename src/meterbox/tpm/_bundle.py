"""The attestation bundle a report carries: ``meterbox-tpm-attestation/1``.

Specified in docs/spec/tpm-attestation.md.

A bundle is a msgpack map with exactly the keys of :data:`_FIELDS`. It is produced by
:meth:`meterbox.tpm.TpmAnchor.attest` and checked by :func:`meterbox.tpm.verify_attestation`.
Decoding validates types, lengths and the version and nothing else: whether the bytes
inside are genuine is the verifier's job.

The qualifying data the TPM signs is ``SHA-256(DOMAIN || nonce || head)`` with a fixed
32-byte nonce and head, so the pair is unambiguous without length prefixes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from meterbox.errors import FormatError

VERSION: Final = 1
DOMAIN: Final = b"meterbox-tpm-attestation/1\x00"
NONCE_LEN: Final = 32
HEAD_LEN: Final = 32
#: The whole bundle; an EK certificate is the largest part (typically 1-1.5 KiB).
MAX_BUNDLE: Final = 16 * 1024
_MAX_FIELD: Final = 4096
_MAX_CERT: Final = 8192
_U64_MAX: Final = 2**64 - 1

# key -> (type, maximum length or None for integers, may be nil)
_FIELDS: Final[dict[str, tuple[type, int | None, bool]]] = {
    "v": (int, None, False),
    "attest": (bytes, _MAX_FIELD, False),
    "signature": (bytes, _MAX_FIELD, False),
    "ak_public": (bytes, _MAX_FIELD, False),
    "ek_public": (bytes, _MAX_FIELD, False),
    "ek_cert": (bytes, _MAX_CERT, True),
    "nv_public": (bytes, _MAX_FIELD, False),
    "counter": (int, None, False),
    "nonce": (bytes, NONCE_LEN, False),
    "head": (bytes, HEAD_LEN, False),
}


def qualifying_data(nonce: bytes, head: bytes) -> bytes:
    """The 32 bytes given to TPM2_NV_Certify as qualifyingData (extraData in the result)."""
    if len(nonce) != NONCE_LEN or len(head) != HEAD_LEN:
        raise FormatError(
            "attestation nonce or head has the wrong length",
            expected=f"a {NONCE_LEN}-byte nonce and a {HEAD_LEN}-byte head hash",
            found=f"{len(nonce)} and {len(head)} bytes",
            hint="pass the ledger head hash (SHA-256) and a 32-byte nonce",
        )
    return hashlib.sha256(DOMAIN + nonce + head).digest()


NONCE_DOMAIN: Final = b"meterbox-tpm-nonce/1\x00"


def report_nonce(instance_id: bytes, acked_hash: bytes | None) -> bytes:
    """The nonce a report's attestation answers: bound to the instance and the last receipt.

    ``acked_hash`` is the head hash of the last receipt the server imported (None before
    the first): an attestation made before that receipt cannot answer a later report.
    """
    return hashlib.sha256(
        NONCE_DOMAIN + hashlib.sha256(instance_id).digest() + (acked_hash or bytes(HEAD_LEN))
    ).digest()


@dataclass(frozen=True)
class AttestationBundle:
    """One TPM-signed statement of the counter's value, bound to a ledger head and nonce.

    ``attest`` is the marshalled ``TPMS_ATTEST``; ``signature`` the ``TPMT_SIGNATURE``;
    ``ak_public``, ``ek_public`` are ``TPMT_PUBLIC``; ``nv_public`` is ``TPMS_NV_PUBLIC``;
    ``ek_cert`` the DER endorsement certificate when the TPM holds one.
    """

    attest: bytes
    signature: bytes
    ak_public: bytes
    ek_public: bytes
    ek_cert: bytes | None
    nv_public: bytes
    counter: int
    nonce: bytes
    head: bytes

    def to_bytes(self) -> bytes:
        out: bytes = msgpack.packb(
            {
                "v": VERSION,
                "attest": self.attest,
                "signature": self.signature,
                "ak_public": self.ak_public,
                "ek_public": self.ek_public,
                "ek_cert": self.ek_cert,
                "nv_public": self.nv_public,
                "counter": self.counter,
                "nonce": self.nonce,
                "head": self.head,
            },
            use_bin_type=True,
        )
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> AttestationBundle:
        if len(data) > MAX_BUNDLE:
            raise FormatError(
                "TPM attestation bundle is too long",
                expected=f"at most {MAX_BUNDLE} bytes",
                found=f"{len(data)} bytes",
                hint="the report's tpm field is corrupt",
            )
        try:
            value = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise FormatError(
                "TPM attestation bundle is not msgpack",
                expected="a msgpack map (meterbox-tpm-attestation/1)",
                found=type(exc).__name__,
                hint="the report's tpm field is corrupt",
            ) from exc
        return cls._from_map(value)

    @classmethod
    def _from_map(cls, value: Any) -> AttestationBundle:
        if not isinstance(value, dict):
            raise FormatError(
                "TPM attestation bundle is not a map",
                expected="a msgpack map",
                found=type(value).__name__,
                hint="the report's tpm field is corrupt",
            )
        if value.get("v") != VERSION:
            raise FormatError(
                "TPM attestation bundle has an unknown version",
                expected=f"v = {VERSION}",
                found=repr(value.get("v"))[:40],
                hint="upgrade the vendor toolkit, or produce the report with a matching server",
            )
        if set(value) != set(_FIELDS):
            raise FormatError(
                "TPM attestation bundle has the wrong fields",
                expected=", ".join(sorted(_FIELDS)),
                found=", ".join(sorted(str(k) for k in value))[:200],
                hint="the report's tpm field is corrupt or from another format",
            )
        for key, (kind, limit, nullable) in _FIELDS.items():
            item = value[key]
            if item is None and nullable:
                continue
            # bool is an int subclass; a counter or version is never a boolean.
            if not isinstance(item, kind) or isinstance(item, bool):
                raise FormatError(
                    f"TPM attestation bundle field {key} has the wrong type",
                    expected=kind.__name__,
                    found=type(item).__name__,
                    hint="the report's tpm field is corrupt",
                )
            if isinstance(item, bytes) and limit is not None:
                exact = key in ("nonce", "head")
                if (exact and len(item) != limit) or len(item) > limit:
                    raise FormatError(
                        f"TPM attestation bundle field {key} has the wrong length",
                        expected=f"{'exactly' if exact else 'at most'} {limit} bytes",
                        found=f"{len(item)} bytes",
                        hint="the report's tpm field is corrupt",
                    )
        if not 0 <= value["counter"] <= _U64_MAX:
            raise FormatError(
                "TPM attestation bundle counter is out of range",
                expected="an unsigned 64-bit value",
                found=str(value["counter"])[:40],
                hint="the report's tpm field is corrupt",
            )
        return cls(
            attest=value["attest"],
            signature=value["signature"],
            ak_public=value["ak_public"],
            ek_public=value["ek_public"],
            ek_cert=value["ek_cert"],
            nv_public=value["nv_public"],
            counter=value["counter"],
            nonce=value["nonce"],
            head=value["head"],
        )
