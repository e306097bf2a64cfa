"""Pure verification of a TPM attestation bundle against what the vendor pinned.

:func:`verify_attestation` takes bytes and the vendor's pinned state and either returns a
:class:`VerifiedAttestation` (finding ``tpm.quote.ok``) or raises one of the errors below,
each carrying its finding code in ``code``. No I/O, no clock: the caller stores the new
pins only after a success.

::

    VerificationError
    └── TpmFinding                 any attestation the vendor must not accept as is
        ├── TpmQuoteForged         tpm.quote.forged: bad structure or signature, not bound
        │                          to the claimed head, or a key that is not a TPM AK
        ├── TpmQuoteReplayed       tpm.quote.replayed: an old nonce or a counter not above
        │                          the last one seen, or made for another ledger head
        ├── TpmQuoteForeign        tpm.quote.foreign: AK, EK or counter index not the pinned
        │                          one (another TPM, a fresh vTPM, a re-created index)
        ├── TpmCounterRollback     tpm.counter.rollback: the TPM's counter is above the value
        │                          the report's ledger commits to (an older state was restored)
        └── TpmMissing             tpm.missing: no attestation where one is required

Checks run in the order of docs/spec/tpm-attestation.md ("Verify"), so one bundle always
yields the same finding. Structural and signature checks come first: nothing a bundle
claims is believed before the pinned key has verified it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from meterbox.crypto import constant_time_equal
from meterbox.errors import FormatError, VerificationError
from meterbox.tpm import _structs as s
from meterbox.tpm._bundle import AttestationBundle, qualifying_data

#: The attributes every attestation key has: a restricted signing key that never left
#: the TPM. A restricted key signs only TPM-generated structures (or digests the TPM
#: checked do not start with TPM_GENERATED_VALUE), which is what makes it an attester.
AK_REQUIRED = (
    s.OBJ_FIXED_TPM
    | s.OBJ_FIXED_PARENT
    | s.OBJ_SENSITIVE_DATA_ORIGIN
    | s.OBJ_RESTRICTED
    | s.OBJ_SIGN
)
COUNTER_BYTES = 8
#: Certificates between an EK certificate and its root (manufacturers use one or two).
_MAX_CHAIN = 4

OK = "tpm.quote.ok"


class TpmFinding(VerificationError):
    code = "tpm"


class TpmQuoteForged(TpmFinding):
    code = "tpm.quote.forged"


class TpmQuoteReplayed(TpmFinding):
    code = "tpm.quote.replayed"


class TpmQuoteForeign(TpmFinding):
    code = "tpm.quote.foreign"


class TpmCounterRollback(TpmFinding):
    code = "tpm.counter.rollback"


class TpmMissing(TpmFinding):
    code = "tpm.missing"


@dataclass(frozen=True)
class TpmPins:
    """What the vendor remembers about one instance's TPM, all ``None`` before enrolment.

    Names are TPM Names (algorithm id + digest of the public area), so they pin the whole
    public area, attributes included.
    """

    ak_name: bytes | None = None
    ek_name: bytes | None = None
    nv_name: bytes | None = None
    last_counter: int | None = None

    @property
    def enrolled(self) -> bool:
        return self.ak_name is not None


@dataclass(frozen=True)
class VerifiedAttestation:
    """A bundle that passed every check; ``pins`` is what to store for the next report."""

    counter: int
    pins: TpmPins
    enrolled_now: bool
    #: None: no EK certificate; False: present but not checked (no roots given), not
    #: usable, or not chaining to a given root (see ``ek_cert_problem``); True: issued
    #: (through given intermediates) by one of the given self-signed roots.
    ek_certified: bool | None
    ek_cert_problem: str | None
    owner_deletable: bool
    clock: s.ClockInfo
    finding: str = OK


def _parse(bundle: AttestationBundle) -> tuple[s.PublicKey, s.Signature, s.NvPublic, s.PublicKey]:
    try:
        return (
            s.parse_public(bundle.ak_public),
            s.parse_signature(bundle.signature),
            s.parse_nv_public(bundle.nv_public),
            s.parse_public(bundle.ek_public),
        )
    except FormatError as exc:
        raise TpmQuoteForged(
            "TPM attestation has a malformed structure",
            expected="TPMT_PUBLIC, TPMT_SIGNATURE and TPMS_NV_PUBLIC as the TPM marshals them",
            found=exc.problem,
            hint="the bundle was altered or not produced by a TPM",
        ) from exc


def _ak_key(ak: s.PublicKey) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    if not ak.has(AK_REQUIRED) or ak.attributes & s.OBJ_DECRYPT:
        raise TpmQuoteForged(
            "TPM attestation key is not a restricted signing key",
            expected=f"objectAttributes with 0x{AK_REQUIRED:08x} set and decrypt clear",
            found=f"0x{ak.attributes:08x}",
            hint="an unrestricted key can sign anything; only a restricted AK attests",
        )
    try:
        if ak.type == s.ALG_ECC:
            curves: dict[int, ec.EllipticCurve] = {
                s.ECC_NIST_P256: ec.SECP256R1(),
                s.ECC_NIST_P384: ec.SECP384R1(),
            }
            curve = curves.get(ak.curve or 0)
            if curve is None or ak.ecc_x is None or ak.ecc_y is None:
                raise ValueError(f"curve 0x{ak.curve or 0:04x} is not P-256 or P-384")
            return ec.EllipticCurvePublicNumbers(
                int.from_bytes(ak.ecc_x, "big"), int.from_bytes(ak.ecc_y, "big"), curve
            ).public_key()
        if ak.rsa_modulus is None or ak.rsa_exponent is None or len(ak.rsa_modulus) < 256:
            raise ValueError("RSA attestation keys must have at least 2048 bits")
        return rsa.RSAPublicNumbers(
            ak.rsa_exponent, int.from_bytes(ak.rsa_modulus, "big")
        ).public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TpmQuoteForged(
            "TPM attestation key is not a usable public key",
            expected="an ECC P-256/P-384 point or an RSA modulus of at least 2048 bits",
            found=str(exc)[:120],
            hint="the bundle was altered or not produced by a TPM",
        ) from exc


_HASH_OBJECTS: dict[int, type[hashes.HashAlgorithm]] = {
    s.ALG_SHA256: hashes.SHA256,
    s.ALG_SHA384: hashes.SHA384,
    s.ALG_SHA512: hashes.SHA512,
}


def _check_signature(
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ak: s.PublicKey,
    sig: s.Signature,
    attest: bytes,
) -> None:
    hash_cls = _HASH_OBJECTS.get(sig.hash_alg)
    wants = {s.ALG_ECC: (s.ALG_ECDSA,), s.ALG_RSA: (s.ALG_RSASSA, s.ALG_RSAPSS)}[ak.type]
    if (
        hash_cls is None
        or sig.alg not in wants
        or (ak.scheme != s.ALG_NULL and (sig.alg != ak.scheme or sig.hash_alg != ak.scheme_hash))
    ):
        raise TpmQuoteForged(
            "TPM attestation signature does not match the attestation key's scheme",
            expected=f"scheme 0x{ak.scheme:04x} with a SHA-2 digest",
            found=f"sigAlg 0x{sig.alg:04x}, hash 0x{sig.hash_alg:04x}",
            hint="the bundle was altered or not produced by this key",
        )
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            der = utils.encode_dss_signature(
                int.from_bytes(sig.ecdsa_r, "big"), int.from_bytes(sig.ecdsa_s, "big")
            )
            key.verify(der, attest, ec.ECDSA(hash_cls()))
        elif sig.alg == s.ALG_RSASSA:
            key.verify(sig.sig, attest, padding.PKCS1v15(), hash_cls())
        else:
            # TPMs differ in the PSS salt length they use (digest size or maximum).
            pss = padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=padding.PSS.AUTO)
            key.verify(sig.sig, attest, pss, hash_cls())
    except (InvalidSignature, ValueError) as exc:
        raise TpmQuoteForged(
            "TPM attestation signature does not verify",
            expected="a signature by the attestation key over the TPMS_ATTEST bytes",
            found="a signature that does not verify",
            hint="the attestation was altered or signed by another key",
        ) from exc


def _ek_cert_status(
    bundle: AttestationBundle, ek: s.PublicKey, roots: Sequence[x509.Certificate]
) -> tuple[bool | None, str | None]:
    if bundle.ek_cert is None:
        return None, None
    try:
        cert = x509.load_der_x509_certificate(bundle.ek_cert)
        public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        # Some manufacturers' certificates use encodings strict parsers refuse; the EK
        # identity still stands on its Name, so this is noted, not rejected.
        return False, f"EK certificate does not parse: {str(exc)[:120]}"
    matches = False
    if isinstance(public, rsa.RSAPublicKey) and ek.rsa_modulus is not None:
        numbers = public.public_numbers()
        matches = numbers.n == int.from_bytes(ek.rsa_modulus, "big") and numbers.e == (
            ek.rsa_exponent or 65537
        )
    elif isinstance(public, ec.EllipticCurvePublicKey) and ek.ecc_x and ek.ecc_y:
        point = public.public_numbers()
        matches = point.x == int.from_bytes(ek.ecc_x, "big") and point.y == int.from_bytes(
            ek.ecc_y, "big"
        )
    if not matches:
        raise TpmQuoteForged(
            "EK certificate does not certify the bundle's endorsement key",
            expected="the certificate's public key to equal ek_public",
            found="a different key",
            hint="the bundle pairs one TPM's EK with another TPM's certificate",
        )
    if not roots:
        return False, "no EK certificate roots were given"
    chain = [cert]
    for _ in range(_MAX_CHAIN):
        issuer = next((c for c in roots if c.subject == chain[-1].issuer and c not in chain), None)
        if issuer is None:
            break
        try:
            chain[-1].verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            break
        if issuer.subject == issuer.issuer:
            return True, None
        chain.append(issuer)
    # Whether an untrusted EK rejects the report is the caller's policy (a license that
    # requires a TPM does, others are warned): see vendorkit/_tpm_check.py.
    return False, (
        f"EK certificate (issuer {cert.issuer.rfc4514_string()[:120]}) does not chain to "
        "a configured TPM manufacturer CA"
    )


def _foreign(what: str, pinned: bytes, found: bytes, hint: str) -> TpmQuoteForeign:
    return TpmQuoteForeign(
        f"TPM attestation comes from another {what}",
        expected=f"the pinned {what} {pinned.hex()}",
        found=found.hex(),
        hint=hint,
    )


def _check_identity(pins: TpmPins, ak: s.PublicKey, ek: s.PublicKey) -> None:
    """Step 4: a different AK or EK is another TPM, whatever it signed."""
    if pins.ak_name is not None and not constant_time_equal(ak.name, pins.ak_name):
        raise _foreign(
            "attestation key",
            pins.ak_name,
            ak.name,
            "the server runs on another TPM (a copy, a new vTPM, or a replaced TPM); "
            "re-enrol the instance only if the change is expected",
        )
    if pins.ek_name is not None and not constant_time_equal(ek.name, pins.ek_name):
        raise _foreign(
            "endorsement key",
            pins.ek_name,
            ek.name,
            "the server runs on another TPM; re-enrol only if the change is expected",
        )


def _check_attest(bundle: AttestationBundle, nv: s.NvPublic) -> tuple[s.NvCertifyAttest, int]:
    """Step 6: the signed structure certifies this bundle's counter, nonce and head."""
    try:
        attest = s.parse_nv_attest(bundle.attest)
    except FormatError as exc:
        raise TpmQuoteForged(
            "TPM attestation is not a TPM-generated NV certification",
            expected="TPMS_ATTEST with TPM_GENERATED_VALUE and type TPM_ST_ATTEST_NV",
            found=exc.problem,
            hint="the key signed something the TPM did not generate",
        ) from exc
    if not constant_time_equal(attest.extra_data, qualifying_data(bundle.nonce, bundle.head)):
        raise TpmQuoteForged(
            "TPM attestation is not bound to the bundle's nonce and head",
            expected="extraData = SHA-256(domain || nonce || head)",
            found=attest.extra_data.hex(),
            hint="the nonce or head was changed after the TPM signed",
        )
    if not constant_time_equal(attest.index_name, nv.name) or not nv.is_counter:
        raise TpmQuoteForged(
            "TPM attestation does not certify the bundle's counter index",
            expected=f"indexName {nv.name.hex()} of an NV counter",
            found=attest.index_name.hex() + ("" if nv.is_counter else " (not a counter)"),
            hint="the nv_public field was altered",
        )
    if attest.offset != 0 or len(attest.nv_contents) != COUNTER_BYTES:
        raise TpmQuoteForged(
            "TPM attestation does not certify the whole counter",
            expected=f"offset 0 and {COUNTER_BYTES} bytes",
            found=f"offset {attest.offset}, {len(attest.nv_contents)} bytes",
            hint="certify the counter with size 8 and offset 0",
        )
    counter = int.from_bytes(attest.nv_contents, "big")
    if counter != bundle.counter:
        raise TpmQuoteForged(
            "TPM attestation bundle states another counter value than the TPM signed",
            expected=str(counter),
            found=str(bundle.counter),
            hint="the counter field was altered",
        )
    return attest, counter


def _check_freshness(
    bundle: AttestationBundle,
    counter: int,
    *,
    head: bytes,
    pins: TpmPins,
    nonce: bytes | None,
    ledger_counter: int | None,
) -> None:
    """Steps 9 and 10: this report's challenge and head, a counter that moved on, and
    the ledger against the TPM (a TPM ahead of the ledger means an older ledger)."""
    if nonce is not None and not constant_time_equal(bundle.nonce, nonce):
        raise TpmQuoteReplayed(
            "TPM attestation answers an old challenge",
            expected=f"nonce {nonce.hex()}",
            found=bundle.nonce.hex(),
            hint="the attestation was made before the vendor's last receipt",
        )
    if not constant_time_equal(bundle.head, head):
        raise TpmQuoteReplayed(
            "TPM attestation was made for another ledger head",
            expected=head.hex(),
            found=bundle.head.hex(),
            hint="an attestation from an earlier report was attached to this one",
        )
    if pins.last_counter is not None and counter <= pins.last_counter:
        raise TpmQuoteReplayed(
            "TPM counter has not advanced since the last report",
            expected=f"a value above {pins.last_counter}",
            found=str(counter),
            hint="the attestation is old; every report advances the counter first",
        )
    if ledger_counter is not None and counter > ledger_counter:
        raise TpmCounterRollback(
            "TPM counter is above the value the report's ledger commits to",
            expected=f"counter {ledger_counter}",
            found=f"TPM counter {counter}",
            hint="the server's data directory was restored from an older copy",
        )
    if ledger_counter is not None and counter < ledger_counter:
        raise TpmQuoteReplayed(
            "TPM attestation is older than the report's ledger",
            expected=f"counter {ledger_counter}",
            found=f"TPM counter {counter}",
            hint="an attestation from an earlier state was attached to this report",
        )


def verify_attestation(
    bundle_bytes: bytes | None,
    *,
    head: bytes,
    pins: TpmPins,
    required: bool,
    ledger_counter: int | None = None,
    nonce: bytes | None = None,
    ek_roots: Sequence[x509.Certificate] = (),
) -> VerifiedAttestation | None:
    """Verify one report's TPM attestation; return ``None`` when there is none and none is due.

    ``head`` is the ledger head hash the report ends at. ``pins`` is the vendor's state for
    the instance (empty before enrolment: the first valid bundle pins AK, EK and counter
    index). An enrolled instance must always attest, whatever ``required`` says, or
    dropping the TPM would hide a rollback. ``ledger_counter`` is the counter value the
    report's ledger head commits to, when the ledger records one. ``nonce`` is the challenge
    the vendor issued for this report, if any; without one, freshness rests on the counter.
    Step numbers below are those of the spec's "Verify" list.
    """
    if not bundle_bytes:  # 1.
        if required or pins.enrolled:
            raise TpmMissing(
                "report carries no TPM attestation",
                expected="a tpm attestation bundle"
                + (" (the license requires a TPM)" if required else " (the TPM is enrolled)"),
                found="none",
                hint="run the server with --tpm require on the machine enrolled with the TPM",
            )
        return None
    try:  # 2.
        bundle = AttestationBundle.from_bytes(bundle_bytes)
    except FormatError as exc:
        raise TpmQuoteForged(
            "TPM attestation bundle is malformed",
            expected="a meterbox-tpm-attestation/1 bundle",
            found=exc.problem,
            hint="the report's tpm field was altered",
        ) from exc
    ak, sig, nv, ek = _parse(bundle)
    key = _ak_key(ak)  # 3.
    _check_identity(pins, ak, ek)  # 4.
    _check_signature(key, ak, sig, bundle.attest)  # 5.
    attest, counter = _check_attest(bundle, nv)  # 6.
    if pins.nv_name is not None and not constant_time_equal(nv.name, pins.nv_name):  # 7.
        raise _foreign(
            "counter index",
            pins.nv_name,
            nv.name,
            "the counter index was deleted and defined again, or another index is used",
        )
    ek_certified, ek_problem = _ek_cert_status(bundle, ek, ek_roots)  # 8.
    _check_freshness(  # 9., 10.
        bundle, counter, head=head, pins=pins, nonce=nonce, ledger_counter=ledger_counter
    )
    return VerifiedAttestation(  # 11.
        counter=counter,
        pins=replace(pins, ak_name=ak.name, ek_name=ek.name, nv_name=nv.name, last_counter=counter),
        enrolled_now=not pins.enrolled,
        ek_certified=ek_certified,
        ek_cert_problem=ek_problem,
        owner_deletable=nv.owner_deletable,
        clock=attest.clock_info,
    )
