"""Ledger key schedule (docs/spec/ledger.md section "Keys"). Pure: no I/O.

``c_0`` is random; ``c_{e+1} = HKDF(c_e, RATCHET_INFO)``; the server keeps only the
current ``c_e`` and erases the previous one when it rolls an epoch, so a later
compromise cannot forge or read earlier epochs. Each epoch's record key mixes in a
random salt published in the epoch record, so a restored snapshot that replays an
epoch number still never reuses an AES-GCM nonce under the same key. ``c_e`` is
sealed to the vendor with HPKE once per epoch: public-key work is per epoch, never
per record.

Record version 2 adds a second chain inside each epoch, one key per committed batch::

    b_{e,0}   = HKDF(c_e, BATCH_ROOT_INFO || salt_e)
    b_{e,j+1} = HKDF-Expand(b_{e,j}, BATCH_RATCHET_INFO)
    seal_{e,j} = HMAC-SHA256(b_{e,j}, BATCH_SEAL_INFO || h_prev || last frame sans seal)[:16]

The server keeps ``record_key_e`` (so it can read its current epoch back and rebuild
its state), ``c_{e+1}`` (to open the next epoch) and the current ``b_{e,j}``; it never
keeps ``c_e``. None of them yields an earlier ``b_{e,i}``: whoever reads the key state
can re-encrypt records of the epoch, but cannot seal an earlier batch again, and the
vendor (who derives every ``b_{e,j}`` from the ``c_e`` it opens) sees the difference.

Record version 3 seals the EPOCH record itself, under a key of its own::

    k_seal_e   = HKDF(c_e, EPOCH_SEAL_KEY_INFO || salt_e)
    epoch_seal = HMAC-SHA256(k_seal_e, EPOCH_SEAL_INFO || h_prev || EPOCH frame sans seal)[:16]

The server's recovery scan reaches ``c_e`` of every epoch after its key state's (by
ratcheting the ``c_{e+1}`` it holds), so it can tell a torn EPOCH record from a whole
one without the vendor's private key (ADR 0030).
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from meterbox.crypto import AeadKey, hkdf, hkdf_expand, hmac_sha256, hpke_open, hpke_seal
from meterbox.errors import FormatError

RATCHET_INFO: Final = b"meterbox-ledger/1 ratchet"
RECORD_KEY_INFO: Final = b"meterbox-ledger/1 record key\x00"
EPOCH_INFO: Final = b"meterbox-ledger/1 epoch\x00"
#: Largest number of ratchet steps a verifier will take to bridge a gap between
#: a known chain key and a report's first epoch (about eight years of hourly epochs).
MAX_RATCHET_STEPS: Final = 70_000
BATCH_ROOT_INFO: Final = b"meterbox-ledger/2 batch root\x00"
BATCH_RATCHET_INFO: Final = b"meterbox-ledger/2 batch ratchet"
BATCH_SEAL_INFO: Final = b"meterbox-ledger/2 batch seal\x00"
EPOCH_SEAL_KEY_INFO: Final = b"meterbox-ledger/3 epoch seal key\x00"
EPOCH_SEAL_INFO: Final = b"meterbox-ledger/3 epoch seal\x00"
#: Largest number of batch steps taken at once (an epoch holds at most
#: ``epoch_max_records`` records, so at most that many batches, by default 65 536).
MAX_BATCH_STEPS: Final = 1 << 17


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


def record_key_raw(chain_key: bytes, salt: bytes) -> bytes:
    return hkdf(chain_key, RECORD_KEY_INFO + salt)


def record_key(chain_key: bytes, salt: bytes) -> AeadKey:
    return AeadKey(record_key_raw(chain_key, salt))


def seal_chain_key(vendor_key: X25519PublicKey, chain_key: bytes, bound: bytes) -> bytes:
    """HPKE-seal ``chain_key``; ``bound`` (the record header and epoch fields) is the info."""
    return hpke_seal(vendor_key, chain_key, EPOCH_INFO + bound)


def open_chain_key(vendor_key: X25519PrivateKey, sealed: bytes, bound: bytes) -> bytes:
    return hpke_open(vendor_key, sealed, EPOCH_INFO + bound)


def batch_root(chain_key: bytes, salt: bytes) -> bytes:
    """``b_{e,0}``: the key of an epoch's first batch."""
    return hkdf(chain_key, BATCH_ROOT_INFO + salt)


def next_batch_key(batch_key: bytes, steps: int = 1) -> bytes:
    """``b_{e,j+steps}`` from ``b_{e,j}``: one-way, so a batch key never yields an earlier one."""
    if steps < 0 or steps > MAX_BATCH_STEPS:
        raise FormatError(
            "ledger batch numbers cannot be bridged",
            expected=f"between 0 and {MAX_BATCH_STEPS} batches ahead of the known key",
            found=f"{steps} batches",
        )
    for _ in range(steps):
        # b_{e,j} is an HKDF output, a uniformly random key: Expand alone suffices.
        batch_key = hkdf_expand(batch_key, BATCH_RATCHET_INFO)
    return batch_key


def batch_seal(batch_key: bytes, prev_hash: bytes, unsealed_frame: bytes) -> bytes:
    """The seal a batch's last frame ends with: over the chain so far and that frame."""
    return hmac_sha256(batch_key, BATCH_SEAL_INFO, prev_hash, unsealed_frame)[:16]


def epoch_seal(chain_key: bytes, salt: bytes, prev_hash: bytes, unsealed_frame: bytes) -> bytes:
    """The seal a version 3 EPOCH frame ends with: over the chain so far and that frame."""
    seal_key = hkdf(chain_key, EPOCH_SEAL_KEY_INFO + salt)
    return hmac_sha256(seal_key, EPOCH_SEAL_INFO, prev_hash, unsealed_frame)[:16]
