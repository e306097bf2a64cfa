"""The signed-document envelope shared by licenses, top-ups and receipts.

A document is one line of UTF-8 JSON plus a newline::

    {"format":"meterbox-license/1","key_id":"<16 hex>","payload":"<b64>","signature":"<b64>"}

The signature is Ed25519 over ``SIGNING_CONTEXT || format || 0x00 || payload_bytes``:
the exact payload bytes, never a re-serialisation, so there is no canonicalisation step
a verifier could get wrong; the format string inside the signed message means a top-up
can never be replayed as a license or a receipt.

Verification order (see docs/spec/license.md): size limit, UTF-8 JSON, envelope shape
and canonical form, format name and version, key lookup, signature; only then is the
payload parsed. Nothing inside the payload is read before the signature verifies.
Every failure is a :class:`FormatError` or a :class:`VerificationError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from meterbox import crypto
from meterbox.errors import FormatError
from meterbox.licenses._bundle import VendorPublicBundle, _b64_exact
from meterbox.licenses._codec import Fields, canonical_json, strict_loads

#: Domain separation for every meterbox signed document (spec: docs/spec/license.md).
SIGNING_CONTEXT: Final = b"meterbox-signed/1\x00"
#: Largest document accepted; checked before any parsing.
DOCUMENT_MAX_BYTES: Final = 1 << 20
_FORMAT_RE: Final = re.compile(r"([a-z][a-z0-9-]{0,63})/([0-9]{1,6})")
_SIGNATURE_LEN: Final = 64


@dataclass(frozen=True)
class DocumentSigner:
    """An Ed25519 vendor signing key together with the id documents will name."""

    key_id: bytes
    private_key: Ed25519PrivateKey

    def __post_init__(self) -> None:
        if len(self.key_id) != crypto.KEY_ID_LEN:
            raise FormatError(
                "signer key id has the wrong length",
                expected=f"{crypto.KEY_ID_LEN} bytes",
                found=f"{len(self.key_id)} bytes",
            )


def signed_message(fmt: str, payload: bytes) -> bytes:
    return SIGNING_CONTEXT + fmt.encode("ascii") + b"\x00" + payload


def seal(fmt: str, payload: Mapping[str, Any], signer: DocumentSigner) -> bytes:
    """Sign ``payload`` (encoded canonically) under ``fmt`` and return the document bytes."""
    if not _FORMAT_RE.fullmatch(fmt):
        raise FormatError("format string is malformed", expected="name/version", found=fmt)
    payload_bytes = canonical_json(payload)
    signature = crypto.sign(signer.private_key, signed_message(fmt, payload_bytes))
    envelope = {
        "format": fmt,
        "key_id": signer.key_id.hex(),
        "payload": crypto.b64e(payload_bytes),
        "signature": crypto.b64e(signature),
    }
    return canonical_json(envelope) + b"\n"


def _split_format(value: object) -> tuple[str, int]:
    if not isinstance(value, str) or not _FORMAT_RE.fullmatch(value):
        raise FormatError(
            "document format is malformed",
            expected="'name/version', e.g. 'meterbox-license/1'",
            found=repr(value)[:80],
        )
    name, version = value.split("/")
    return name, int(version)


def peek_format(data: bytes) -> str:
    """The envelope's claimed format, unverified: only for choosing which verifier to call."""
    _check_size(data)
    f = Fields(strict_loads(data, "signed document"), "signed document")
    fmt = f.raw("format")
    _split_format(fmt)
    assert isinstance(fmt, str)
    return fmt


def _check_size(data: bytes) -> None:
    if len(data) > DOCUMENT_MAX_BYTES:
        raise FormatError(
            "signed document is too large",
            expected=f"at most {DOCUMENT_MAX_BYTES} bytes",
            found=f"{len(data)} bytes",
            hint="This is not a meterbox license, top-up or receipt file",
        )


@dataclass(frozen=True)
class Opened:
    """A verified envelope: the parsed payload and the id of the key that signed it."""

    payload: Any
    key_id: bytes
    #: The format version the document was written in (one of the accepted ones).
    version: int = 1


#: Finds the public key a document's ``key_id`` names; raises VerificationError if none.
KeyLookup = Callable[[bytes], Ed25519PublicKey]


def unseal(
    data: bytes, expected_format: str | tuple[str, ...], bundle: VendorPublicBundle
) -> Opened:
    """Verify a document of ``expected_format`` against ``bundle`` and parse its payload.

    ``expected_format`` may list several versions of one format (oldest first); the
    document may be in any of them, and the signature is checked over the version it
    names.
    """
    return unseal_with(data, expected_format, lambda kid: bundle.by_id(kid).signing_key())


def unseal_with(data: bytes, expected_format: str | tuple[str, ...], lookup: KeyLookup) -> Opened:
    """:func:`unseal` with the signing key found by ``lookup`` (not a vendor bundle).

    For documents a server signs with its instance key (borrow tokens, docs/spec/borrow.md).
    """
    accepted = (expected_format,) if isinstance(expected_format, str) else expected_format
    _check_size(data)
    f = Fields(strict_loads(data, "signed document"), "signed document")
    found_fmt = f.raw("format")
    key_hex = f.hex("key_id", nbytes=crypto.KEY_ID_LEN)
    payload_b64 = f.raw("payload")
    signature_b64 = f.raw("signature")
    f.done()

    want_name, _ = _split_format(accepted[0])
    versions = [_split_format(a)[1] for a in accepted]
    name, version = _split_format(found_fmt)
    if name != want_name:
        raise FormatError(
            f"file is not a {want_name} document",
            expected=" or ".join(repr(a) for a in accepted),
            found=repr(found_fmt),
            hint="Check which file you passed",
        )
    if version not in versions:
        raise FormatError(
            f"{want_name} document has an unknown format version",
            expected="version " + " or ".join(str(v) for v in versions),
            found=f"version {version}",
            hint="A newer format needs a newer meterbox",
        )
    assert isinstance(found_fmt, str)

    payload_bytes = _b64_exact(payload_b64, "document payload")
    signature = _b64_exact(signature_b64, "document signature")
    # The envelope must be exactly what `seal` writes: one encoding per document means the
    # file's SHA-256 identifies it and no byte of it can change without detection.
    canonical = (
        canonical_json(
            {
                "format": found_fmt,
                "key_id": key_hex,
                "payload": payload_b64,
                "signature": signature_b64,
            }
        )
        + b"\n"
    )
    if data != canonical:
        raise FormatError(
            "signed document is not in canonical form",
            expected="the exact bytes the vendor tool wrote (one JSON line, newline-terminated)",
            found="reformatted or edited text",
            hint="Copy the original file in binary mode; do not open and re-save it",
        )
    if len(signature) != _SIGNATURE_LEN:
        raise FormatError(
            "document signature has the wrong length",
            expected=f"{_SIGNATURE_LEN} bytes",
            found=f"{len(signature)} bytes",
        )

    key_id = bytes.fromhex(key_hex)
    crypto.verify_signature(lookup(key_id), signature, signed_message(found_fmt, payload_bytes))
    return Opened(strict_loads(payload_bytes, f"{want_name} payload"), key_id, version)
