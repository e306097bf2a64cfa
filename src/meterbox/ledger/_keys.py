"""Ledger key schedule (docs/spec/ledger.md section "Keys"). Pure: no I/O.

``c_0`` is random; ``c_{e+1} = HKDF(c_e, RATCHET_INFO)``; the server keeps only the
current ``c_e`` and erases the previous one when it rolls an epoch, so a later
compromise cannot forge or read earlier epochs. Each epoch's record key mixes in a
random salt published in the epoch record, so a restored snapshot that replays an
epoch number still never reuses an AES-GCM nonce under the same key. ``c_e`` is
sealed to the vendor with HPKE once per epoch: public-key work is per epoch, never
per record.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from meterbox.crypto import AeadKey, hkdf, hpke_open, hpke_seal
from meterbox.errors import FormatError

RATCHET_INFO: Final = b"meterbox-ledger/1 ratchet"
RECORD_KEY_INFO: Final = b"meterbox-ledger/1 record key\x00"
EPOCH_INFO: Final = b"meterbox-ledger/1 epoch\x00"
#: Largest number of ratchet steps a verifier will take to bridge a gap between
#: a known chain key and a report's first epoch (about eight years of hourly epochs).
MAX_RATCHET_STEPS: Final = 70_000


def ratchet(chain_key: bytes, steps: int = 1) -> bytes:
    if steps < 0 or steps > MAX_RATCHET_STEPS:
        raise FormatError(
            "ledger epoch numbers cannot be bridged",
            expected=f"between 0 and {MAX_RATCHET_STEPS} epochs ahead of the known key",
            found=f"{steps} epochs",
        )
    for _ in range(steps):
        chain_key = hkdf(chain_key, RATCHET_INFO)
    return chain_key


def record_key(chain_key: bytes, salt: bytes) -> AeadKey:
    return AeadKey(hkdf(chain_key, RECORD_KEY_INFO + salt))


def seal_chain_key(vendor_key: X25519PublicKey, chain_key: bytes, bound: bytes) -> bytes:
    """HPKE-seal ``chain_key``; ``bound`` (the record header and epoch fields) is the info."""
    return hpke_seal(vendor_key, chain_key, EPOCH_INFO + bound)


def open_chain_key(vendor_key: X25519PrivateKey, sealed: bytes, bound: bytes) -> bytes:
    return hpke_open(vendor_key, sealed, EPOCH_INFO + bound)
