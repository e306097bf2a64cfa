"""RSA-2048 keys for signing Cryptolens-format license responses.

Cryptolens SDKs hold the server's public key in the .NET XML form::

    <RSAKeyValue><Modulus>base64(n)</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>

and verify RSASSA-PKCS1-v1_5 signatures: SHA-256 over the ``licenseKey`` bytes,
SHA-512 over the metadata ``Data`` bytes. The Python SDK hard-codes a 256-byte
signature, so the key MUST be RSA-2048 and that is checked on every load.

Keys load from PEM (PKCS#8 or traditional, unencrypted) or from the .NET XML
form with the private parts ``P, Q, DP, DQ, InverseQ, D``. The XML parser is a
strict regular grammar, not an XML library: it accepts only an ``RSAKeyValue``
element holding known child elements of base64 text, each at most once, with
whitespace between tags; anything else (declarations, DTDs, entities,
comments, attributes, namespaces, unknown elements) is refused. That makes
entity expansion and external entities impossible by construction.
"""

from __future__ import annotations

import base64
import binascii
import re
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from meterbox._fs import write_new_file
from meterbox.errors import ConfigError, FormatError, StateError

__all__ = [
    "KEY_BITS",
    "CryptolensSigner",
    "public_key_from_xml",
    "public_key_to_xml",
]

KEY_BITS: Final = 2048
PUBLIC_EXPONENT: Final = 65_537
#: A 2048-bit private key in XML is about 1.7 KB; anything far larger is not a key.
MAX_XML_BYTES: Final = 16 * 1024
_PRIVATE_PARTS: Final = ("P", "Q", "DP", "DQ", "InverseQ", "D")
_ALL_PARTS: Final = ("Modulus", "Exponent", *_PRIVATE_PARTS)
_OUTER = re.compile(r"\A\s*<RSAKeyValue>(?P<body>.*)</RSAKeyValue>\s*\Z", re.DOTALL)
_CHILD = re.compile(r"\s*<(?P<tag>[A-Za-z]+)>(?P<text>[A-Za-z0-9+/=\s]*)</(?P=tag)>\s*")


def _b64_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.b64encode(value.to_bytes(size, "big")).decode("ascii")


def _parse_xml_parts(text: str) -> dict[str, int]:
    if len(text.encode("utf-8")) > MAX_XML_BYTES:
        raise FormatError(
            "RSA key XML is too large",
            expected=f"at most {MAX_XML_BYTES} bytes",
            found=f"{len(text.encode('utf-8'))} bytes",
        )
    outer = _OUTER.match(text)
    if outer is None:
        raise FormatError(
            "RSA key XML is not a plain <RSAKeyValue> element",
            expected="<RSAKeyValue><Modulus>…</Modulus><Exponent>…</Exponent>…</RSAKeyValue>"
            " without declarations, DTDs, comments or attributes",
            found=repr(text[:60]),
        )
    body = outer.group("body")
    parts: dict[str, int] = {}
    pos = 0
    while pos < len(body):
        child = _CHILD.match(body, pos)
        if child is None:
            raise FormatError(
                "RSA key XML holds something other than base64 child elements",
                expected="only <Modulus>, <Exponent>, <P>, <Q>, <DP>, <DQ>, <InverseQ>, <D>",
                found=repr(body[pos : pos + 40]),
            )
        tag = child.group("tag")
        if tag not in _ALL_PARTS or tag in parts:
            raise FormatError(
                "RSA key XML has an unknown or repeated element",
                expected=f"each of {', '.join(_ALL_PARTS)} at most once",
                found=f"<{tag}>",
            )
        try:
            raw = base64.b64decode("".join(child.group("text").split()), validate=True)
        except binascii.Error:
            raise FormatError(
                f"<{tag}> is not valid base64",
                expected="standard base64 of a big-endian unsigned integer",
                found=repr(child.group("text")[:40]),
            ) from None
        if not raw:
            raise FormatError(f"<{tag}> is empty", expected="a base64 integer", found="nothing")
        parts[tag] = int.from_bytes(raw, "big")
        pos = child.end()
    if "Modulus" not in parts or "Exponent" not in parts:
        raise FormatError(
            "RSA key XML lacks the public key",
            expected="both <Modulus> and <Exponent>",
            found=", ".join(sorted(parts)) or "no elements",
        )
    present = [p for p in _PRIVATE_PARTS if p in parts]
    if present and len(present) != len(_PRIVATE_PARTS):
        raise FormatError(
            "RSA key XML has only some private parts",
            expected=f"all of {', '.join(_PRIVATE_PARTS)} or none",
            found=", ".join(present),
        )
    return parts


def _check_size(n: int) -> None:
    if n.bit_length() != KEY_BITS:
        raise FormatError(
            "the RSA key has the wrong size",
            expected=f"a {KEY_BITS}-bit modulus (the SDKs assume 256-byte signatures)",
            found=f"{n.bit_length()} bits",
            hint="generate a new key with CryptolensSigner.generate",
        )


def public_key_from_xml(text: str) -> rsa.RSAPublicKey:
    """Parse ``<RSAKeyValue><Modulus>…</Modulus><Exponent>…</Exponent></RSAKeyValue>``."""
    parts = _parse_xml_parts(text)
    _check_size(parts["Modulus"])
    return rsa.RSAPublicNumbers(parts["Exponent"], parts["Modulus"]).public_key()


def public_key_to_xml(key: rsa.RSAPublicKey) -> str:
    """The XML form applications embed and pass to the SDKs."""
    numbers = key.public_numbers()
    return (
        f"<RSAKeyValue><Modulus>{_b64_uint(numbers.n, KEY_BITS // 8)}</Modulus>"
        f"<Exponent>{_b64_uint(numbers.e)}</Exponent></RSAKeyValue>"
    )


class CryptolensSigner:
    """Holds the server's RSA-2048 private key and signs license responses."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        _check_size(private_key.public_key().public_numbers().n)
        self._key = private_key

    @classmethod
    def generate(cls, path: Path) -> CryptolensSigner:
        """Create a new key and write it as unencrypted PKCS#8 PEM, mode 0600, never overwriting."""
        key = rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=KEY_BITS)
        signer = cls(key)
        try:
            write_new_file(path, signer.private_key_pem(), mode=0o600)
        except StateError:
            # A key path is a setting the caller chose, so an existing file there is a
            # configuration mistake rather than damaged state.
            raise ConfigError(
                "refusing to overwrite an existing Cryptolens signing key",
                expected="a path where no file exists",
                found=str(path),
                hint="load the existing key with CryptolensSigner.load, or choose another path",
            ) from None
        return signer

    @classmethod
    def load(cls, path: Path) -> CryptolensSigner:
        """Load a PEM or .NET XML private key from a file."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(
                "cannot read the Cryptolens signing key",
                expected="a readable PEM or <RSAKeyValue> XML file",
                found=f"{path}: {exc.strerror}",
            ) from None
        if data.lstrip().startswith(b"<"):
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError(
                    "RSA key XML is not UTF-8", expected="UTF-8 text", found="other bytes"
                ) from None
            return cls.from_xml(text)
        return cls.from_pem(data)

    @classmethod
    def from_pem(cls, data: bytes) -> CryptolensSigner:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise FormatError(
                "not an unencrypted PEM private key",
                expected="-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----",
                found=repr(data[:40]),
            ) from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise FormatError(
                "the PEM key is not an RSA key",
                expected="an RSA-2048 private key",
                found=type(key).__name__,
            )
        return cls(key)

    @classmethod
    def from_xml(cls, text: str) -> CryptolensSigner:
        """Load the .NET ``ToXmlString(true)`` form with private parts."""
        parts = _parse_xml_parts(text)
        if "D" not in parts:
            raise FormatError(
                "the RSA key XML holds only a public key",
                expected=f"the private parts {', '.join(_PRIVATE_PARTS)}",
                found="Modulus and Exponent only",
            )
        _check_size(parts["Modulus"])
        numbers = rsa.RSAPrivateNumbers(
            p=parts["P"],
            q=parts["Q"],
            d=parts["D"],
            dmp1=parts["DP"],
            dmq1=parts["DQ"],
            iqmp=parts["InverseQ"],
            public_numbers=rsa.RSAPublicNumbers(parts["Exponent"], parts["Modulus"]),
        )
        try:
            key = numbers.private_key()
        except ValueError:
            raise FormatError(
                "the RSA key XML parts are inconsistent",
                expected="P*Q = Modulus and matching DP, DQ, InverseQ, D",
                found="numbers that do not form a valid RSA key",
            ) from None
        return cls(key)

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def public_key_xml(self) -> str:
        return public_key_to_xml(self.public_key)

    def private_key_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def private_key_xml(self) -> str:
        """The .NET ``ToXmlString(true)`` form, parts zero-padded to the lengths .NET expects."""
        numbers = self._key.private_numbers()
        half = KEY_BITS // 16
        fields = (
            ("Modulus", _b64_uint(numbers.public_numbers.n, KEY_BITS // 8)),
            ("Exponent", _b64_uint(numbers.public_numbers.e)),
            ("P", _b64_uint(numbers.p, half)),
            ("Q", _b64_uint(numbers.q, half)),
            ("DP", _b64_uint(numbers.dmp1, half)),
            ("DQ", _b64_uint(numbers.dmq1, half)),
            ("InverseQ", _b64_uint(numbers.iqmp, half)),
            ("D", _b64_uint(numbers.d, KEY_BITS // 8)),
        )
        return "<RSAKeyValue>" + "".join(f"<{t}>{v}</{t}>" for t, v in fields) + "</RSAKeyValue>"

    def sign_license(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over the exact ``licenseKey`` bytes."""
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def sign_metadata(self, data: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-512 over the exact metadata ``Data`` bytes."""
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA512())
