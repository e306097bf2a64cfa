"""Vendor key management: create, rotate and load the vendor's key pairs.

Layout of a vendor home directory::

    home/vendor.pub            public bundle (meterbox-vendor-pub/1), safe to ship
    home/keys/<key_id>.key     one private key pair (meterbox-vendor-key/1), mode 0600

Invariants:

* a private key file is created with ``O_CREAT | O_EXCL`` and mode 0600, so it is never
  world-readable, not even for a moment, and an existing key is never overwritten;
* ``vendor.pub`` is replaced atomically (write to a temporary file, fsync, rename,
  fsync the directory); a crash leaves the old or the new bundle, never half of one;
* rotation appends a key pair and makes it current; old pairs stay, so reports sealed
  to an old ledger key still open and documents signed by an old key still verify;
* on load, every key in the bundle must have its private file, and the private keys
  must match the public ones; a private file not in the bundle (left by a rotation
  interrupted before the bundle was replaced) is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from meterbox import crypto
from meterbox._fs import atomic_write, check_private_file, write_new_file
from meterbox.clock import Clock, SystemClock
from meterbox.errors import FormatError, StateError
from meterbox.licenses import (
    DocumentSigner,
    Fields,
    VendorPublicBundle,
    VendorPublicKey,
    canonical_json,
    derive_key_id,
    format_time,
    strict_loads,
)

PRIVATE_FORMAT: Final = "meterbox-vendor-key/1"
BUNDLE_FILE: Final = "vendor.pub"
KEYS_DIR: Final = "keys"
_PRIVATE_MAX_BYTES: Final = 16 * 1024

__all__ = [
    "BUNDLE_FILE",
    "PRIVATE_FORMAT",
    "VendorKeyPair",
    "VendorKeys",
    "atomic_write",
    "init",
    "rotate",
    "write_new_file",
]


@dataclass(frozen=True)
class VendorKeyPair:
    """One key generation: Ed25519 for signatures, X25519 for sealing ledgers to the vendor."""

    sign_private: Ed25519PrivateKey
    ledger_private: X25519PrivateKey
    created: datetime

    @classmethod
    def generate(cls, now: datetime) -> VendorKeyPair:
        return cls(Ed25519PrivateKey.generate(), X25519PrivateKey.generate(), now)

    @classmethod
    def from_raw(cls, sign_raw: bytes, ledger_raw: bytes, created: datetime) -> VendorKeyPair:
        """Build from raw 32-byte private keys (fixed keys for test vectors)."""
        return cls(
            crypto.ed25519_private_from_raw(sign_raw),
            crypto.x25519_private_from_raw(ledger_raw),
            created,
        )

    @property
    def public(self) -> VendorPublicKey:
        sign_public = crypto.ed25519_raw_public(self.sign_private.public_key())
        ledger_public = crypto.x25519_raw_public(self.ledger_private.public_key())
        return VendorPublicKey(
            derive_key_id(sign_public, ledger_public), sign_public, ledger_public, self.created
        )

    @property
    def key_id(self) -> bytes:
        return self.public.key_id

    def signer(self) -> DocumentSigner:
        return DocumentSigner(self.key_id, self.sign_private)

    def to_private_bytes(self) -> bytes:
        doc = {
            "format": PRIVATE_FORMAT,
            "key_id": self.key_id.hex(),
            "sign_private": crypto.b64e(crypto.ed25519_raw_private(self.sign_private)),
            "ledger_private": crypto.b64e(crypto.x25519_raw_private(self.ledger_private)),
            "created": format_time(self.created),
        }
        return canonical_json(doc) + b"\n"

    @classmethod
    def from_private_bytes(cls, data: bytes, what: str) -> VendorKeyPair:
        if len(data) > _PRIVATE_MAX_BYTES:
            raise FormatError(
                f"{what} is too large to be a key file",
                expected=f"at most {_PRIVATE_MAX_BYTES} bytes",
                found=f"{len(data)} bytes",
            )
        f = Fields(strict_loads(data, what), what)
        fmt = f.raw("format")
        if fmt != PRIVATE_FORMAT:
            raise FormatError(
                f"{what} is not a meterbox vendor key of a known version",
                expected=repr(PRIVATE_FORMAT),
                found=repr(fmt)[:80],
            )
        key_hex = f.hex("key_id", nbytes=crypto.KEY_ID_LEN)
        sign_raw = crypto.b64d(f.text("sign_private"), "sign_private")
        ledger_raw = crypto.b64d(f.text("ledger_private"), "ledger_private")
        created = f.time("created")
        f.done()
        pair = cls.from_raw(sign_raw, ledger_raw, created)
        if pair.key_id.hex() != key_hex:
            raise FormatError(
                f"{what} holds keys that do not match its key id",
                expected=key_hex,
                found=pair.key_id.hex(),
                hint="The key file was edited or damaged; restore it from backup",
            )
        return pair


@dataclass(frozen=True)
class VendorKeys:
    """The vendor's public bundle and the private key pairs behind it, by key id."""

    bundle: VendorPublicBundle
    pairs: Mapping[bytes, VendorKeyPair]

    def __post_init__(self) -> None:
        for key in self.bundle.keys:
            pair = self.pairs.get(key.key_id)
            if pair is None:
                raise StateError(
                    "a key in vendor.pub has no private key file",
                    expected=f"{KEYS_DIR}/{key.key_id.hex()}.key",
                    found="no such file",
                    hint="Restore the keys directory from backup",
                )
            if pair.public != key:
                raise StateError(
                    "private key does not match vendor.pub",
                    expected=f"the key pair published as {key.key_id.hex()}",
                    found="a different key pair",
                    hint="Restore vendor.pub and the keys directory from the same backup",
                )

    @property
    def current_id(self) -> bytes:
        return self.bundle.current_id

    def pair(self, key_id: bytes | None = None) -> VendorKeyPair:
        wanted = self.current_id if key_id is None else key_id
        self.bundle.by_id(wanted)  # raises a clear error for an unknown id
        return self.pairs[wanted]

    def signer(self, key_id: bytes | None = None) -> DocumentSigner:
        """The signer for ``key_id`` (default: the current key)."""
        return self.pair(key_id).signer()

    def ledger_private(self, key_id: bytes) -> X25519PrivateKey:
        """The X25519 key that opens ledgers sealed to ``key_id``."""
        return self.pair(key_id).ledger_private

    @classmethod
    def load(cls, home: Path) -> VendorKeys:
        home = Path(home)
        bundle_path = home / BUNDLE_FILE
        try:
            bundle = VendorPublicBundle.from_bytes(bundle_path.read_bytes())
        except FileNotFoundError:
            raise StateError(
                "no vendor keys in this home directory",
                expected=f"{bundle_path}",
                found="no such file",
                hint=f"run `meterbox vendor init --home {home}` first",
            ) from None
        pairs: dict[bytes, VendorKeyPair] = {}
        for key in bundle.keys:
            path = home / KEYS_DIR / f"{key.key_id.hex()}.key"
            if not check_private_file(path, what="vendor private key file"):
                continue  # __post_init__ reports the missing file
            pairs[key.key_id] = VendorKeyPair.from_private_bytes(path.read_bytes(), str(path))
        return cls(bundle, pairs)


def _write_pair(home: Path, pair: VendorKeyPair) -> None:
    keys_dir = home / KEYS_DIR
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_new_file(keys_dir / f"{pair.key_id.hex()}.key", pair.to_private_bytes(), mode=0o600)


def init(
    home: Path,
    *,
    clock: Clock | None = None,
    pair: VendorKeyPair | None = None,
) -> VendorKeys:
    """Create the vendor's first key pair and ``vendor.pub`` in ``home``."""
    home = Path(home)
    existing = home / BUNDLE_FILE
    keys_dir = home / KEYS_DIR
    if existing.exists() or (keys_dir.is_dir() and any(keys_dir.glob("*.key"))):
        raise StateError(
            "vendor keys already exist in this home directory",
            expected="an empty or new directory",
            found=str(existing if existing.exists() else keys_dir),
            hint="Use `meterbox vendor rotate-key` to add a key; never overwrite keys "
            "that signed licenses in use",
        )
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = pair or VendorKeyPair.generate((clock or SystemClock()).now())
    _write_pair(home, pair)
    bundle = VendorPublicBundle((pair.public,), pair.key_id)
    atomic_write(existing, bundle.to_bytes(), mode=0o644)
    return VendorKeys(bundle, {pair.key_id: pair})


def rotate(
    home: Path,
    *,
    clock: Clock | None = None,
    pair: VendorKeyPair | None = None,
) -> VendorKeys:
    """Add a new key pair and make it current; keep every old one."""
    home = Path(home)
    keys = VendorKeys.load(home)
    pair = pair or VendorKeyPair.generate((clock or SystemClock()).now())
    # The private file first: a crash before the bundle is replaced leaves an unused
    # file behind, never a published key without its private half.
    _write_pair(home, pair)
    bundle = keys.bundle.with_key(pair.public)
    atomic_write(home / BUNDLE_FILE, bundle.to_bytes(), mode=0o644)
    return VendorKeys(bundle, {**keys.pairs, pair.key_id: pair})
