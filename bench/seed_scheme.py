"""A model of the seed design's usage file, for side-by-side measurements.

Modelled from the published description (../shared/CONTEXT.md): every flush reads the
whole usage file, wraps it together with the new update and a timestamp in a fresh
hybrid ciphertext -- RSA-2048 PKCS#1 v1.5 over a random AES-128 key, AES-128-CBC
with zero padding, MessagePack inside -- and rewrites the file. Decoding peels the
layers one RSA operation at a time. This is a benchmark baseline only: it is
deliberately as weak as the original (no authenticity, zero padding).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


def _zero_pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % BLOCK)


def seal_layer(public_key: rsa.RSAPublicKey, inner: bytes, update: dict[str, int]) -> bytes:
    key, iv = os.urandom(16), os.urandom(16)
    body = msgpack.packb([inner, update, int(time.time())], use_bin_type=True)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ct = enc.update(_zero_pad(body)) + enc.finalize()
    wrapped = public_key.encrypt(key, padding.PKCS1v15())
    return wrapped + iv + len(body).to_bytes(4, "big") + ct


def open_layer(private_key: rsa.RSAPrivateKey, data: bytes) -> tuple[bytes, dict[str, int]]:
    key = private_key.decrypt(data[:256], padding.PKCS1v15())
    iv, n = data[256:272], int.from_bytes(data[272:276], "big")
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    body = (dec.update(data[276:]) + dec.finalize())[:n]
    inner, update, _ = msgpack.unpackb(body, raw=False)
    return inner, update


class SeedUsageFile:
    """The seed's flush: read all, wrap in one more layer, rewrite (here also fsync'ed)."""

    def __init__(self, path: Path, public_key: rsa.RSAPublicKey) -> None:
        self.path = path
        self.public_key = public_key
        path.write_bytes(b"")

    def flush(self, update: dict[str, int]) -> None:
        inner = self.path.read_bytes()
        data = seal_layer(self.public_key, inner, update)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def decode_all(private_key: rsa.RSAPrivateKey, data: bytes) -> list[dict[str, int]]:
    updates = []
    while data:
        data, update = open_layer(private_key, data)
        updates.append(update)
    updates.reverse()
    return updates
