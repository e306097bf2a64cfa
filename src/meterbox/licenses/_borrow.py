"""Borrow tokens: a server's signed statement that one machine holds a seat offline.

A borrow token (``meterbox-borrow/1``, docs/spec/borrow.md) is a signed document in the
envelope every meterbox document uses (docs/spec/license.md), signed by the license
server's *instance* key (the Ed25519 key that also signs its reports), not by the
vendor. The client SDK verifies it with no server: signature under the instance key
the application trusts, format, the machine it is bound to, and the validity window.

Invariants:

* a :class:`BorrowToken` is valid by construction (names, hex digests, an expiry after
  its issue time, at most :data:`MAX_BORROW_SECONDS` long);
* ``from_bytes(to_bytes(t)) == t`` and one token has exactly one encoding;
* :meth:`BorrowToken.verify` raises; it never returns a bool. Nothing in the payload is
  read before the signature verifies.

The machine code never leaves the client: the token carries
``machine_digest(code)``, a domain-separated SHA-256, so the server and its ledger learn
only that two borrows came from the same machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meterbox import crypto
from meterbox.errors import FormatError, LicenseExpired, VerificationError
from meterbox.licenses._codec import (
    Fields,
    check_hex,
    check_name,
    check_text,
    check_utc,
    format_time,
)
from meterbox.licenses._envelope import DocumentSigner, seal, unseal_with
from meterbox.licenses._license import MAX_BORROW_HOURS

BORROW_FORMAT: Final = "meterbox-borrow/1"
#: Longest a token may run: the longest borrow a license may allow.
MAX_BORROW_SECONDS: Final = MAX_BORROW_HOURS * 3600
#: Domain separation for the machine digest (docs/spec/borrow.md, "Machine binding").
MACHINE_CONTEXT: Final = b"meterbox-borrow-machine/1\x00"
#: Length of the machine digest, in bytes (hex in the token: twice that).
MACHINE_DIGEST_LEN: Final = 32
#: A token issued this far in the future of the verifier's clock is still accepted:
#: the server's and the client's clocks differ a little.
ISSUE_SKEW: Final = timedelta(minutes=5)


_LEASE_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_lease_id(value: object) -> str:
    """A lease id as the server makes them: 1 to 64 characters of base64url."""
    if not isinstance(value, str) or not _LEASE_ID_RE.fullmatch(value):
        raise FormatError(
            "borrow token has a malformed lease_id",
            expected="1-64 characters of A-Z a-z 0-9 _ -",
            found=repr(value)[:80],
        )
    return value


def machine_digest(machine_code: str) -> str:
    """The hex digest of ``machine_code`` that tokens and ledger records carry."""
    if not isinstance(machine_code, str) or not machine_code:
        raise FormatError(
            "machine code is empty",
            expected="a non-empty machine code (the SDK computes one)",
            found=repr(machine_code)[:80],
        )
    return crypto.sha256(MACHINE_CONTEXT, machine_code.encode("utf-8")).hex()


def instance_key_id(public_raw: bytes) -> bytes:
    """The key id of a server instance key, as a token's envelope names it."""
    return crypto.key_id(public_raw)


@dataclass(frozen=True)
class BorrowToken:
    """One borrowed seat, as the server granted it (fields: docs/spec/borrow.md)."""

    lease_id: str
    feature: str
    license_id: str
    client_id: str
    instance_id: str
    machine: str
    issued: datetime
    expires: datetime

    def __post_init__(self) -> None:
        check_lease_id(self.lease_id)
        check_name(self.feature, "feature")
        check_name(self.license_id, "license_id")
        check_text(self.client_id, "client_id")
        check_hex(self.instance_id, "instance_id", nbytes=16)
        check_hex(self.machine, "machine", nbytes=MACHINE_DIGEST_LEN)
        issued = check_utc(self.issued, "issued")
        expires = check_utc(self.expires, "expires")
        object.__setattr__(self, "issued", issued)
        object.__setattr__(self, "expires", expires)
        if not issued < expires <= issued + timedelta(seconds=MAX_BORROW_SECONDS):
            raise FormatError(
                "borrow token has an impossible validity window",
                expected=f"expires after issued, by at most {MAX_BORROW_HOURS} hours",
                found=f"issued {format_time(issued)}, expires {format_time(expires)}",
            )

    # ----------------------------------------------------------------- encoding
    def to_payload(self) -> dict[str, Any]:
        return {
            "lease_id": self.lease_id,
            "feature": self.feature,
            "license_id": self.license_id,
            "client_id": self.client_id,
            "instance_id": self.instance_id,
            "machine": self.machine,
            "issued": format_time(self.issued),
            "expires": format_time(self.expires),
        }

    @classmethod
    def from_payload(cls, value: object) -> BorrowToken:
        f = Fields(value, "borrow token")
        token = cls(
            lease_id=f.text("lease_id"),
            feature=f.name("feature"),
            license_id=f.name("license_id"),
            client_id=f.text("client_id"),
            instance_id=f.hex("instance_id", nbytes=16),
            machine=f.hex("machine", nbytes=MACHINE_DIGEST_LEN),
            issued=f.time("issued"),
            expires=f.time("expires"),
        )
        f.done()
        return token

    def sign(self, signer: DocumentSigner) -> bytes:
        """The token file: one JSON line, signed by the server's instance key."""
        return seal(BORROW_FORMAT, self.to_payload(), signer)

    @classmethod
    def from_bytes(cls, data: bytes, instance_key: Ed25519PublicKey) -> BorrowToken:
        """Check the envelope and the signature under ``instance_key``; parse the payload.

        Says nothing about the machine or the time: :meth:`verify` does all of it.
        """
        raw = crypto.ed25519_raw_public(instance_key)
        want = instance_key_id(raw)

        def lookup(key_id: bytes) -> Ed25519PublicKey:
            if not crypto.constant_time_equal(key_id, want):
                raise VerificationError(
                    "borrow token is signed by another server",
                    expected=f"a token of the server with key id {want.hex()}",
                    found=f"key id {key_id.hex()}",
                    hint="Borrow the seat again from your own license server",
                )
            return instance_key

        return cls.from_payload(unseal_with(data, BORROW_FORMAT, lookup).payload)

    @classmethod
    def verify(
        cls,
        data: bytes,
        *,
        instance_key: Ed25519PublicKey,
        machine_code: str,
        now: datetime,
        feature: str | None = None,
    ) -> BorrowToken:
        """The token, if it lets this machine use the seat at ``now``; otherwise raise.

        Steps (docs/spec/borrow.md, "Verify"): envelope and signature; ``feature`` if
        given; the machine digest (constant time); then ``issued - ISSUE_SKEW <= now <
        expires``. A token past its expiry is :class:`LicenseExpired`; every other
        refusal is :class:`VerificationError` or :class:`FormatError`.
        """
        token = cls.from_bytes(data, instance_key)
        if feature is not None and token.feature != feature:
            raise VerificationError(
                "borrow token is for another feature",
                expected=repr(feature),
                found=repr(token.feature),
                hint="Borrow a seat of this feature",
            )
        mine = machine_digest(machine_code)
        if not crypto.constant_time_equal(bytes.fromhex(mine), bytes.fromhex(token.machine)):
            raise VerificationError(
                "borrow token was issued to another machine",
                expected=f"a token bound to this machine ({mine[:12]}...)",
                found=f"a token bound to machine {token.machine[:12]}...",
                hint="A borrowed seat is usable only on the machine that borrowed it; "
                "borrow a seat from this machine while it can reach the license server",
            )
        now = check_utc(now, "now")
        if now >= token.expires:
            raise LicenseExpired(
                f"Borrowed seat of {token.feature!r} has expired",
                expected=f"a time before {format_time(token.expires)}",
                found=format_time(now),
                hint="Reconnect to the license server and borrow the seat again",
            )
        if now < token.issued - ISSUE_SKEW:
            raise VerificationError(
                "borrow token is dated in the future of this machine's clock",
                expected=f"a clock at or after {format_time(token.issued - ISSUE_SKEW)}",
                found=format_time(now),
                hint="Check this machine's clock",
            )
        return token
