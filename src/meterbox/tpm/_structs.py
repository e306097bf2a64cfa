"""Spec-exact, bounded parsers for the few TPM 2.0 structures an attestation carries.

The structures are those of TPM 2.0 Library Part 2 (Structures), big-endian, with
``TPM2B_*`` being a ``u16`` length followed by that many bytes:

- ``TPMS_ATTEST`` (10.12.12): magic, type, qualifiedSigner, extraData, clockInfo,
  firmwareVersion, then the type's ``attested`` member. Only ``TPM_ST_ATTEST_NV``
  (``TPMS_NV_CERTIFY_INFO``) is accepted: meterbox attests an NV counter, never PCRs.
- ``TPMT_PUBLIC`` (12.2.4) for RSA and ECC keys, enough to rebuild the public key with
  ``cryptography`` and to compute the key's Name.
- ``TPMT_SIGNATURE`` (11.3.4) for RSASSA, RSAPSS and ECDSA.
- ``TPMS_NV_PUBLIC`` (13.5) to compute an NV index's Name and read its attributes.

Invariants: every parser reads at most ``len(data)`` bytes, each length field is checked
against both the bytes left and the structure's maximum before anything is sliced, a
parse consumes its input exactly (trailing bytes are an error), and every failure is a
:class:`meterbox.errors.FormatError`. Work is linear in the input and no structure
nests, so there is no recursion to bound.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Final

from meterbox.errors import FormatError

TPM_GENERATED_VALUE: Final = 0xFF544347
TPM_ST_ATTEST_NV: Final = 0x8014

ALG_RSA: Final = 0x0001
ALG_SHA1: Final = 0x0004
ALG_SHA256: Final = 0x000B
ALG_SHA384: Final = 0x000C
ALG_SHA512: Final = 0x000D
ALG_NULL: Final = 0x0010
ALG_RSASSA: Final = 0x0014
ALG_RSAES: Final = 0x0015
ALG_RSAPSS: Final = 0x0016
ALG_OAEP: Final = 0x0017
ALG_ECDSA: Final = 0x0018
ALG_ECDH: Final = 0x0019
ALG_ECC: Final = 0x0023
ALG_AES: Final = 0x0006
ALG_CFB: Final = 0x0043

ECC_NIST_P256: Final = 0x0003
ECC_NIST_P384: Final = 0x0004

#: TPMA_OBJECT bits (Part 2, 8.3).
OBJ_FIXED_TPM: Final = 1 << 1
OBJ_FIXED_PARENT: Final = 1 << 4
OBJ_SENSITIVE_DATA_ORIGIN: Final = 1 << 5
OBJ_USER_WITH_AUTH: Final = 1 << 6
OBJ_RESTRICTED: Final = 1 << 16
OBJ_DECRYPT: Final = 1 << 17
OBJ_SIGN: Final = 1 << 18

#: TPMA_NV bits (Part 2, 13.4).
NV_AUTHWRITE: Final = 1 << 2
NV_TPM_NT_SHIFT: Final = 4
NV_TPM_NT_MASK: Final = 0xF << NV_TPM_NT_SHIFT
NV_POLICY_DELETE: Final = 1 << 10
NV_AUTHREAD: Final = 1 << 18
NV_NO_DA: Final = 1 << 25
NV_WRITTEN: Final = 1 << 29
NV_PLATFORMCREATE: Final = 1 << 30
TPM_NT_COUNTER: Final = 0x1

#: Hash algorithms a Name or a signature may use, with their digest sizes.
HASHES: Final[dict[int, tuple[str, int]]] = {
    ALG_SHA1: ("sha1", 20),
    ALG_SHA256: ("sha256", 32),
    ALG_SHA384: ("sha384", 48),
    ALG_SHA512: ("sha512", 64),
}

# Structure maxima from Part 2 with the reference implementation's sizes: a Name is an
# algorithm id plus the largest digest; TPM2B_DATA is sizeof(TPMT_HA); an RSA modulus is
# at most 4096 bits here; an ECC coordinate at most P-521's 66 bytes; an NV read at most
# MAX_NV_BUFFER_SIZE (1024 in the reference, 2048 allowed for headroom).
MAX_NAME: Final = 2 + 64
MAX_DATA: Final = 2 + 64
MAX_DIGEST: Final = 64
MAX_RSA_KEY: Final = 512
MAX_ECC_PARAM: Final = 66
MAX_NV_BUFFER: Final = 2048
#: Upper bound for any one structure given to a parser, far above real sizes.
MAX_STRUCTURE: Final = 4096


class _Reader:
    """A cursor over bytes whose every read is checked against what is left."""

    def __init__(self, data: bytes, what: str) -> None:
        if len(data) > MAX_STRUCTURE:
            raise FormatError(
                f"{what} is too long",
                expected=f"at most {MAX_STRUCTURE} bytes",
                found=f"{len(data)} bytes",
                hint="this is not a TPM structure; check the field it came from",
            )
        self._data = data
        self._pos = 0
        self._what = what

    def take(self, n: int, field: str) -> bytes:
        if n > len(self._data) - self._pos:
            raise FormatError(
                f"{self._what} ends inside {field}",
                expected=f"{n} more bytes at offset {self._pos}",
                found=f"{len(self._data) - self._pos}",
                hint="the structure is truncated or not a TPM structure",
            )
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int(struct.unpack(">H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack(">I", self.take(4, field))[0])

    def u64(self, field: str) -> int:
        return int(struct.unpack(">Q", self.take(8, field))[0])

    def tpm2b(self, field: str, maximum: int) -> bytes:
        size = self.u16(field + " size")
        if size > maximum:
            raise FormatError(
                f"{self._what}: {field} is too long",
                expected=f"at most {maximum} bytes",
                found=f"{size}",
                hint="the structure is corrupt or not a TPM structure",
            )
        return self.take(size, field)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise FormatError(
                f"{self._what} has trailing bytes",
                expected=f"exactly {self._pos} bytes",
                found=f"{len(self._data)}",
                hint="pass the marshalled structure alone, without a size prefix or padding",
            )


def _fail(what: str, field: str, expected: str, found: int) -> FormatError:
    return FormatError(
        f"{what}: unsupported {field}",
        expected=expected,
        found=f"0x{found:04x}",
        hint="meterbox attests with RSA or ECC keys and SHA-2 digests only",
    )


def _hash_alg(r: _Reader, what: str, field: str) -> int:
    alg = r.u16(field)
    if alg not in HASHES:
        raise _fail(what, field, "SHA-1, SHA-256, SHA-384 or SHA-512", alg)
    return alg


def digest(alg: int, data: bytes) -> bytes:
    """The digest of ``data`` with TPM hash algorithm ``alg`` (one of :data:`HASHES`)."""
    name, _ = HASHES[alg]
    return hashlib.new(name, data).digest()


def make_name(name_alg: int, public_area: bytes) -> bytes:
    """A TPM Name: the name algorithm's id followed by its digest of the public area."""
    return struct.pack(">H", name_alg) + digest(name_alg, public_area)


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class NvCertifyAttest:
    """A parsed ``TPMS_ATTEST`` of type ``TPM_ST_ATTEST_NV``."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    index_name: bytes
    offset: int
    nv_contents: bytes


def parse_nv_attest(data: bytes) -> NvCertifyAttest:
    """Parse a marshalled ``TPMS_ATTEST`` that certifies NV contents."""
    what = "TPMS_ATTEST"
    r = _Reader(data, what)
    magic = r.u32("magic")
    if magic != TPM_GENERATED_VALUE:
        raise FormatError(
            "TPMS_ATTEST does not start with TPM_GENERATED_VALUE",
            expected="magic 0xff544347",
            found=f"0x{magic:08x}",
            hint="only structures the TPM generated itself are attestations",
        )
    kind = r.u16("type")
    if kind != TPM_ST_ATTEST_NV:
        raise FormatError(
            "TPMS_ATTEST is not an NV certification",
            expected=f"type TPM_ST_ATTEST_NV (0x{TPM_ST_ATTEST_NV:04x})",
            found=f"0x{kind:04x}",
            hint="produce the attestation with TPM2_NV_Certify over the counter index",
        )
    signer = r.tpm2b("qualifiedSigner", MAX_NAME)
    extra = r.tpm2b("extraData", MAX_DATA)
    ticks, resets, restarts = r.u64("clock"), r.u32("resetCount"), r.u32("restartCount")
    safe = r.u8("safe")
    if safe > 1:
        raise FormatError(
            "TPMS_ATTEST clockInfo.safe is not a TPMI_YES_NO",
            expected="0 or 1",
            found=str(safe),
            hint="the structure is corrupt",
        )
    clock = ClockInfo(ticks, resets, restarts, safe == 1)
    firmware = r.u64("firmwareVersion")
    index_name = r.tpm2b("indexName", MAX_NAME)
    offset = r.u16("offset")
    contents = r.tpm2b("nvContents", MAX_NV_BUFFER)
    r.end()
    return NvCertifyAttest(signer, extra, clock, firmware, index_name, offset, contents)


@dataclass(frozen=True)
class PublicKey:
    """A parsed ``TPMT_PUBLIC`` of an RSA or ECC key."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: int
    scheme: int
    scheme_hash: int | None
    # RSA
    rsa_bits: int | None
    rsa_exponent: int | None
    rsa_modulus: bytes | None
    # ECC
    curve: int | None
    ecc_x: bytes | None
    ecc_y: bytes | None
    raw: bytes

    @property
    def name(self) -> bytes:
        return make_name(self.name_alg, self.raw)

    def has(self, attributes: int) -> bool:
        return self.attributes & attributes == attributes


def _sym_def(r: _Reader, what: str) -> int:
    alg = r.u16("symmetric.algorithm")
    if alg != ALG_NULL:
        r.u16("symmetric.keyBits")
        r.u16("symmetric.mode")
    return alg


def _scheme(r: _Reader, what: str, allowed: tuple[int, ...]) -> tuple[int, int | None]:
    scheme = r.u16("scheme")
    if scheme in (ALG_NULL, ALG_RSAES):
        return scheme, None
    if scheme not in allowed:
        raise _fail(what, "scheme", "NULL, RSASSA, RSAPSS, OAEP, ECDSA or ECDH", scheme)
    return scheme, _hash_alg(r, what, "scheme.hashAlg")


def parse_public(data: bytes) -> PublicKey:
    """Parse a marshalled ``TPMT_PUBLIC`` (no ``TPM2B`` size prefix) of an RSA or ECC key."""
    what = "TPMT_PUBLIC"
    r = _Reader(data, what)
    kind = r.u16("type")
    name_alg = r.u16("nameAlg")
    if name_alg not in HASHES or name_alg == ALG_SHA1:
        raise _fail(what, "nameAlg", "SHA-256, SHA-384 or SHA-512", name_alg)
    attributes = r.u32("objectAttributes")
    policy = r.tpm2b("authPolicy", MAX_DIGEST)
    symmetric = _sym_def(r, what)
    if kind == ALG_RSA:
        scheme, scheme_hash = _scheme(r, what, (ALG_RSASSA, ALG_RSAPSS, ALG_OAEP))
        bits = r.u16("keyBits")
        exponent = r.u32("exponent") or 65537  # Part 2, 12.2.3.5: zero means 2^16 + 1.
        modulus = r.tpm2b("unique.rsa", MAX_RSA_KEY)
        r.end()
        return PublicKey(
            kind, name_alg, attributes, policy, symmetric, scheme, scheme_hash,
            bits, exponent, modulus, None, None, None, data,
        )  # fmt: skip
    if kind == ALG_ECC:
        scheme, scheme_hash = _scheme(r, what, (ALG_ECDSA, ALG_ECDH))
        curve = r.u16("curveID")
        kdf = r.u16("kdf.scheme")
        if kdf != ALG_NULL:
            _hash_alg(r, what, "kdf.hashAlg")
        x = r.tpm2b("unique.ecc.x", MAX_ECC_PARAM)
        y = r.tpm2b("unique.ecc.y", MAX_ECC_PARAM)
        r.end()
        return PublicKey(
            kind, name_alg, attributes, policy, symmetric, scheme, scheme_hash,
            None, None, None, curve, x, y, data,
        )  # fmt: skip
    raise _fail(what, "type", "RSA (0x0001) or ECC (0x0023)", kind)


@dataclass(frozen=True)
class Signature:
    """A parsed ``TPMT_SIGNATURE``: ``r``/``s`` for ECDSA, ``sig`` for RSA schemes."""

    alg: int
    hash_alg: int
    sig: bytes
    ecdsa_r: bytes
    ecdsa_s: bytes


def parse_signature(data: bytes) -> Signature:
    """Parse a marshalled ``TPMT_SIGNATURE`` made with RSASSA, RSAPSS or ECDSA."""
    what = "TPMT_SIGNATURE"
    r = _Reader(data, what)
    alg = r.u16("sigAlg")
    if alg in (ALG_RSASSA, ALG_RSAPSS):
        hash_alg = _hash_alg(r, what, "hash")
        sig = r.tpm2b("sig", MAX_RSA_KEY)
        r.end()
        return Signature(alg, hash_alg, sig, b"", b"")
    if alg == ALG_ECDSA:
        hash_alg = _hash_alg(r, what, "hash")
        sr = r.tpm2b("signatureR", MAX_ECC_PARAM)
        ss = r.tpm2b("signatureS", MAX_ECC_PARAM)
        r.end()
        return Signature(alg, hash_alg, b"", sr, ss)
    raise _fail(what, "sigAlg", "RSASSA, RSAPSS or ECDSA", alg)


@dataclass(frozen=True)
class NvPublic:
    """A parsed ``TPMS_NV_PUBLIC``."""

    index: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    data_size: int
    raw: bytes

    @property
    def name(self) -> bytes:
        return make_name(self.name_alg, self.raw)

    @property
    def is_counter(self) -> bool:
        return (self.attributes & NV_TPM_NT_MASK) >> NV_TPM_NT_SHIFT == TPM_NT_COUNTER

    @property
    def owner_deletable(self) -> bool:
        """Whether the owner hierarchy (or TPM2_Clear) can delete the index.

        An index created by the platform with TPMA_NV_POLICY_DELETE can only be removed
        with TPM2_NV_UndefineSpaceSpecial, which needs both platform authorisation and its
        authPolicy; every other index goes with TPM2_NV_UndefineSpace or TPM2_Clear.
        """
        undeletable = NV_PLATFORMCREATE | NV_POLICY_DELETE
        return self.attributes & undeletable != undeletable


def parse_nv_public(data: bytes) -> NvPublic:
    """Parse a marshalled ``TPMS_NV_PUBLIC`` (no ``TPM2B`` size prefix)."""
    what = "TPMS_NV_PUBLIC"
    r = _Reader(data, what)
    index = r.u32("nvIndex")
    if index >> 24 != 0x01:
        raise FormatError(
            "TPMS_NV_PUBLIC names a handle outside the NV index range",
            expected="a handle 0x01000000-0x01ffffff",
            found=f"0x{index:08x}",
            hint="the structure is corrupt or not an NV public area",
        )
    name_alg = r.u16("nameAlg")
    if name_alg not in HASHES or name_alg == ALG_SHA1:
        raise _fail(what, "nameAlg", "SHA-256, SHA-384 or SHA-512", name_alg)
    attributes = r.u32("attributes")
    policy = r.tpm2b("authPolicy", MAX_DIGEST)
    size = r.u16("dataSize")
    r.end()
    return NvPublic(index, name_alg, attributes, policy, size, data)
