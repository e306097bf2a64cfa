"""The vendor's public key bundle (``vendor.pub``), format ``meterbox-vendor-pub/1``.

The bundle is what a server, a client or an auditor needs to trust the vendor: every
Ed25519 key that ever signed a document and the X25519 key that ledgers seal to, each
under its key id. Invariants checked at construction:

* a key id is ``meterbox.crypto.key_id(sign_public || ledger_public)``, so an id names
  one signing key *and* one ledger key, and neither can be swapped under an old id;
* key ids are unique, and ``current`` names one of them;
* keys are kept in creation order; rotation only appends.

The bundle itself is not signed: it is the trust anchor and is distributed out of band
(shipped with the application or copied by the vendor's administrator).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meterbox import crypto
from meterbox.errors import FormatError, VerificationError
from meterbox.licenses._codec import (
    Fields,
    canonical_json,
    check_utc,
    format_time,
    strict_loads,
)

BUNDLE_FORMAT: Final = "meterbox-vendor-pub/1"
#: A bundle holds a few keys; anything near this size is not a bundle.
BUNDLE_MAX_BYTES: Final = 256 * 1024


def derive_key_id(sign_public: bytes, ledger_public: bytes) -> bytes:
    """The 8-byte id of a vendor key pair: it binds the signing and the ledger key."""
    return crypto.key_id(sign_public + ledger_public)


def _b64_exact(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string", expected="text", found=repr(text))
    raw = crypto.b64d(text, what)
    if crypto.b64e(raw) != text:
        raise FormatError(
            f"{what} is not canonical base64",
            expected=repr(crypto.b64e(raw)),
            found=repr(text[:60]),
        )
    return raw


@dataclass(frozen=True)
class VendorPublicKey:
    """One vendor key generation: signing key, ledger key, id and creation time."""

    key_id: bytes
    sign_public: bytes
    ledger_public: bytes
    created: datetime

    def __post_init__(self) -> None:
        crypto.ed25519_public_from_raw(self.sign_public)
        crypto.x25519_public_from_raw(self.ledger_public)
        object.__setattr__(self, "created", check_utc(self.created, "key creation time"))
        expected = derive_key_id(self.sign_public, self.ledger_public)
        if not crypto.constant_time_equal(expected, self.key_id):
            raise FormatError(
                "vendor key id does not match its keys",
                expected=expected.hex(),
                found=self.key_id.hex(),
                hint="The bundle was edited; copy vendor.pub again from the vendor",
            )

    @property
    def key_id_hex(self) -> str:
        return self.key_id.hex()

    def signing_key(self) -> Ed25519PublicKey:
        return crypto.ed25519_public_from_raw(self.sign_public)

    def ledger_key(self) -> X25519PublicKey:
        return crypto.x25519_public_from_raw(self.ledger_public)

    def to_json(self) -> dict[str, str]:
        return {
            "key_id": self.key_id.hex(),
            "sign_public": crypto.b64e(self.sign_public),
            "ledger_public": crypto.b64e(self.ledger_public),
            "created": format_time(self.created),
        }

    @classmethod
    def from_json(cls, value: object) -> VendorPublicKey:
        f = Fields(value, "vendor key entry")
        key_id = bytes.fromhex(f.hex("key_id", nbytes=crypto.KEY_ID_LEN))
        sign_public = _b64_exact(f.raw("sign_public"), "sign_public")
        ledger_public = _b64_exact(f.raw("ledger_public"), "ledger_public")
        created = f.time("created")
        f.done()
        return cls(key_id, sign_public, ledger_public, created)


@dataclass(frozen=True)
class VendorPublicBundle:
    """Every public key of one vendor, and which of them is current."""

    keys: tuple[VendorPublicKey, ...]
    current_id: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if not self.keys:
            raise FormatError("vendor bundle has no keys", expected="at least one key", found="0")
        ids = [k.key_id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise FormatError(
                "vendor bundle lists a key id twice",
                expected="unique key ids",
                found=", ".join(i.hex() for i in ids),
            )
        if self.current_id not in ids:
            raise FormatError(
                "vendor bundle's current key is not in its key list",
                expected="one of " + ", ".join(i.hex() for i in ids),
                found=self.current_id.hex(),
            )

    @property
    def current(self) -> VendorPublicKey:
        return self.by_id(self.current_id)

    def by_id(self, key_id: bytes) -> VendorPublicKey:
        for key in self.keys:
            if key.key_id == key_id:
                return key
        raise VerificationError(
            "document names a vendor key this bundle does not hold",
            expected="one of " + ", ".join(k.key_id.hex() for k in self.keys),
            found=key_id.hex(),
            hint="Install the vendor's current vendor.pub, or ask the vendor to re-issue",
        )

    def with_key(self, key: VendorPublicKey, *, make_current: bool = True) -> VendorPublicBundle:
        """A new bundle with ``key`` appended (rotation never drops old keys)."""
        current = key.key_id if make_current else self.current_id
        return VendorPublicBundle((*self.keys, key), current)

    def to_bytes(self) -> bytes:
        doc = {
            "format": BUNDLE_FORMAT,
            "current": self.current_id.hex(),
            "keys": [k.to_json() for k in self.keys],
        }
        return canonical_json(doc) + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> VendorPublicBundle:
        if len(data) > BUNDLE_MAX_BYTES:
            raise FormatError(
                "vendor bundle is too large",
                expected=f"at most {BUNDLE_MAX_BYTES} bytes",
                found=f"{len(data)} bytes",
                hint="Pass the vendor.pub file written by `meterbox vendor init`",
            )
        f = Fields(strict_loads(data, "vendor bundle"), "vendor bundle")
        fmt = f.raw("format")
        if fmt != BUNDLE_FORMAT:
            raise FormatError(
                "file is not a meterbox vendor bundle of a known version",
                expected=repr(BUNDLE_FORMAT),
                found=repr(fmt)[:80],
                hint="Pass the vendor.pub file written by `meterbox vendor init`",
            )
        current = bytes.fromhex(f.hex("current", nbytes=crypto.KEY_ID_LEN))
        keys = tuple(VendorPublicKey.from_json(k) for k in f.array("keys"))
        f.done()
        return cls(keys, current)
