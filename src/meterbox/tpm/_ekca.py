"""TPM manufacturer CA certificates, as the vendor adds them with ``vendor tpm-ca add``.

Pure: a file's bytes go in, validated certificates come out, or a
:class:`~meterbox.errors.FormatError` that says what was expected and what was found.
A file is one DER certificate or one or more PEM ``CERTIFICATE`` blocks (manufacturers
publish both; a PEM file may hold a root and its intermediates). Every certificate
MUST be a CA certificate (basicConstraints cA = TRUE): an EK certificate or a TLS leaf
added by mistake would otherwise become a "manufacturer" that vouches for nothing.
Nothing is trusted unless the whole file passes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from meterbox.errors import FormatError

#: Larger than any CA certificate (a few KiB) or bundle of them a manufacturer ships.
MAX_CA_FILE: Final = 256 * 1024
#: More certificates than this in one file is not a manufacturer's chain.
MAX_CA_CERTS: Final = 32
_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)


@dataclass(frozen=True)
class TpmCa:
    """One trusted CA: its DER, the SHA-256 of it (hex) and its subject (RFC 4514)."""

    der: bytes
    sha256: str
    subject: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)


def _bad(found: str) -> FormatError:
    return FormatError(
        "not a TPM manufacturer CA certificate file",
        expected="one DER certificate, or PEM CERTIFICATE blocks, each a CA certificate "
        "(basicConstraints cA = TRUE)",
        found=found,
        hint="download the EK root and intermediate CA certificates from the TPM "
        "manufacturer (or your hypervisor's vTPM CA) and add those files",
    )


def _one(cert: x509.Certificate, where: str) -> TpmCa:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _bad(f"{where}: no basicConstraints extension (not a CA)") from None
    except ValueError as exc:
        raise _bad(f"{where}: unreadable extensions ({str(exc)[:80]})") from None
    if not constraints.ca:
        raise _bad(f"{where}: basicConstraints cA = FALSE (a leaf, perhaps an EK certificate)")
    der = cert.public_bytes(Encoding.DER)
    return TpmCa(der, hashlib.sha256(der).hexdigest(), cert.subject.rfc4514_string())


def parse_ca_file(data: bytes) -> list[TpmCa]:
    """Every CA certificate in ``data`` (PEM or DER), or :class:`FormatError` for all."""
    if not data:
        raise _bad("an empty file")
    if len(data) > MAX_CA_FILE:
        raise _bad(f"{len(data)} bytes (at most {MAX_CA_FILE})")
    if data.lstrip().startswith(b"-----BEGIN"):
        blocks = _PEM_BLOCK.findall(data)
        if not blocks:
            raise _bad("PEM text without a CERTIFICATE block")
        if len(blocks) > MAX_CA_CERTS:
            raise _bad(f"{len(blocks)} certificates (at most {MAX_CA_CERTS})")
        certs: list[TpmCa] = []
        for n, block in enumerate(blocks, 1):
            try:
                cert = x509.load_pem_x509_certificate(block)
            except ValueError as exc:
                raise _bad(f"PEM block {n} does not parse ({str(exc)[:80]})") from None
            certs.append(_one(cert, f"certificate {n}"))
        return certs
    try:
        cert = x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise _bad(f"{len(data)} bytes that are neither PEM nor DER ({str(exc)[:80]})") from None
    return [_one(cert, "the certificate")]
