"""The one module that talks to a TPM: a thin shell over ``tpm2-pytss`` (ESAPI).

A :class:`TpmDevice` opens a TCTI (``device:/dev/tpmrm0``, ``swtpm:host=127.0.0.1,port=2321``,
``mssim:...``) and offers the handful of commands meterbox needs: define, increment and
read an NV counter, read the endorsement key (and its certificate), load or create the
persistent attestation key, and certify the counter with ``TPM2_NV_Certify``. Every
TSS error becomes a :class:`meterbox.errors.StateError` that says which command failed
and what to check; nothing here decides anything.

Objects this module creates on the TPM:

- the counter index (default ``0x01004d42``): ``TPM_NT_COUNTER``, 8 bytes, read and
  incremented with its own authValue, ``NO_DA``. Defined by the platform hierarchy with
  ``TPMA_NV_POLICY_DELETE`` and an authPolicy nobody can satisfy where the platform
  hierarchy is available (swtpm without firmware): then neither the owner nor
  ``TPM2_Clear`` can delete it. Where firmware has closed the platform hierarchy
  (physical PCs and UEFI virtual machines after boot) it is defined by the owner and can
  be deleted by the owner;
  a counter defined again still starts above every value any counter on the TPM held.
- the attestation key (default persistent handle ``0x81004d42``): a primary ECC P-256
  restricted signing key (ECDSA-SHA256) in the endorsement hierarchy. A primary key is
  derived from the hierarchy's seed and its template, so it is the same key on every
  creation on the same TPM; persisting it only saves the derivation.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Final

from meterbox.errors import StateError
from meterbox.tpm import _structs as s
from meterbox.tpm._policy import DEFAULT_AK_HANDLE, DEFAULT_TCTI, TpmProbe

# ESYS logs every TPM error response to stderr by itself; meterbox reports errors through
# its own messages, so the library's log is off unless the operator asks for it.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_ECC,
    TPM2_NT,
    TPM2_RC,
    TPM2_SE,
    TPMA_NV,
    TPMA_OBJECT,
    TPMS_NV_PUBLIC,
    TPMT_PUBLIC,
    TPMT_SIG_SCHEME,
    TSS2_Exception,
)
from tpm2_pytss import TPM2B_ENCRYPTED_SECRET as _TPM2B_ENCRYPTED_SECRET
from tpm2_pytss import TPM2B_ID_OBJECT as _TPM2B_ID_OBJECT
from tpm2_pytss import TPM2B_NV_PUBLIC as _TPM2B_NV_PUBLIC
from tpm2_pytss import TPM2B_PUBLIC as _TPM2B_PUBLIC
from tpm2_pytss import TCTILdr as _TCTILdr
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

COUNTER_SIZE: Final = 8
#: TCG EK Credential Profile low-range certificate indices.
EK_CERT_RSA2048: Final = 0x01C00002
EK_CERT_ECC256: Final = 0x01C0000A
#: authPolicy of the counter index: the SHA-256 of a fixed label. Reaching it from a
#: policy session would need a SHA-256 preimage, so TPM2_NV_UndefineSpaceSpecial can
#: never be authorised and a platform-created index with POLICY_DELETE stays for good.
UNSATISFIABLE_POLICY: Final = hashlib.sha256(b"meterbox: this counter is never deleted").digest()
#: Largest NV read in one command that every TPM supports (MAX_NV_BUFFER_SIZE >= 512).
_NV_CHUNK: Final = 512

_COUNTER_ATTRS: Final = (
    TPMA_NV.AUTHREAD
    | TPMA_NV.AUTHWRITE
    | TPMA_NV.NO_DA
    | (TPM2_NT.COUNTER << TPMA_NV.TPM2_NT_SHIFT)
)
_AK_ATTRS: Final = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.SIGN_ENCRYPT
)


@dataclass(frozen=True)
class CounterInfo:
    index: int
    name: bytes
    nv_public: bytes
    owner_deletable: bool


@dataclass(frozen=True)
class KeyInfo:
    public: bytes
    name: bytes


@dataclass(frozen=True)
class EkInfo:
    public: bytes
    name: bytes
    cert: bytes | None
    kind: str


def _split_tcti(tcti: str) -> tuple[str, str | None]:
    name, _, conf = tcti.partition(":")
    if not name:
        raise StateError(
            "TCTI string has no name",
            expected="name[:config], e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321",
            found=repr(tcti)[:80],
            hint="pass a TCTI as tpm2-tools accepts it",
        )
    return name, conf or None


def _tpm_error(what: str, exc: TSS2_Exception, hint: str) -> StateError:
    return StateError(
        f"TPM command failed: {what}",
        expected="the TPM to accept the command",
        found=f"{exc} (rc 0x{int(exc.rc):x})",
        hint=hint,
    )


class TpmDevice:
    """A connection to one TPM through a TCTI; use as a context manager or call close()."""

    def __init__(self, tcti: str = DEFAULT_TCTI) -> None:
        self.tcti = tcti
        name, conf = _split_tcti(tcti)
        try:
            self._tcti = _TCTILdr(name, conf)
            self._esys: Any = ESAPI(self._tcti)
        except TSS2_Exception as exc:
            raise StateError(
                "cannot connect to the TPM",
                expected=f"a TPM 2.0 answering at {tcti}",
                found=f"{exc} (rc 0x{int(exc.rc):x})",
                hint="check that the TPM (or vTPM, or swtpm) is enabled and that this user "
                "may open it (group tss for /dev/tpmrm0)",
            ) from exc
        self._nv: dict[int, Any] = {}
        self._keys: dict[int, Any] = {}
        self._ek: EkInfo | None = None

    def close(self) -> None:
        self._esys.close()
        self._tcti.close()

    def __enter__(self) -> TpmDevice:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @staticmethod
    def probe(tcti: str = DEFAULT_TCTI) -> TpmProbe:
        """Whether a TPM 2.0 answers at ``tcti``; never raises for an absent TPM."""
        try:
            with TpmDevice(tcti) as dev:
                dev._esys.get_capability(TPM2_CAP.TPM_PROPERTIES, 0x100, 1)
        except StateError as exc:
            return TpmProbe(tcti, False, exc.found or exc.problem)
        except TSS2_Exception as exc:
            return TpmProbe(tcti, False, str(exc))
        return TpmProbe(tcti, True, "TPM 2.0 answered")

    # NV counter ---------------------------------------------------------------------

    def _nv_handle(self, index: int, auth: bytes) -> Any:
        handle = self._nv.get(index)
        if handle is None:
            try:
                handle = self._esys.tr_from_tpmpublic(index)
            except TSS2_Exception as exc:
                raise StateError(
                    "TPM counter index is not defined",
                    expected=f"NV index 0x{index:08x}",
                    found=f"{exc}",
                    hint="run `meterbox server init --tpm require` on this machine, or the "
                    "data directory belongs to another TPM",
                ) from exc
            self._nv[index] = handle
        self._esys.tr_set_auth(handle, auth)
        return handle

    def counter_info(self, index: int, auth: bytes) -> CounterInfo:
        handle = self._nv_handle(index, auth)
        try:
            public, name = self._esys.nv_read_public(handle)
        except TSS2_Exception as exc:
            raise _tpm_error("NV_ReadPublic", exc, "check the counter index") from exc
        raw = public.nvPublic.marshal()
        parsed = s.parse_nv_public(raw)
        if not parsed.is_counter or parsed.data_size != COUNTER_SIZE:
            raise StateError(
                "TPM index is not a meterbox counter",
                expected=f"an 8-byte TPM_NT_COUNTER index at 0x{index:08x}",
                found=f"attributes 0x{parsed.attributes:08x}, {parsed.data_size} bytes",
                hint="another program uses this index; choose another index for meterbox",
            )
        return CounterInfo(index, bytes(name), raw, parsed.owner_deletable)

    def create_counter(self, index: int, auth: bytes, *, platform: bool = True) -> CounterInfo:
        """Define the counter (undeletable where the TPM allows) and give it its first value.

        With ``platform`` the platform hierarchy is tried first; without it, or when that
        fails, the owner defines the index. An index that already exists as an 8-byte
        counter is adopted: its value can only have grown, so adopting it cannot hide a
        rollback.
        """
        template = _TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=index,
                nameAlg=TPM2_ALG.SHA256,
                attributes=_COUNTER_ATTRS | TPMA_NV.PLATFORMCREATE | TPMA_NV.POLICY_DELETE,
                authPolicy=UNSATISFIABLE_POLICY,
                dataSize=COUNTER_SIZE,
            )
        )
        handle: Any = None
        try:
            if platform:
                handle = self._esys.nv_define_space(auth, template, auth_handle=ESYS_TR.PLATFORM)
        except TSS2_Exception as exc:
            if exc.error == TPM2_RC.NV_DEFINED:
                return self._adopt(index, auth)
            # The platform hierarchy is disabled or its auth unknown (firmware owns it
            # on physical machines): fall back to an owner index.
        if handle is None:
            template.nvPublic.attributes = _COUNTER_ATTRS
            template.nvPublic.authPolicy = b""
            try:
                handle = self._esys.nv_define_space(auth, template, auth_handle=ESYS_TR.OWNER)
            except TSS2_Exception as exc:
                if exc.error == TPM2_RC.NV_DEFINED:
                    return self._adopt(index, auth)
                raise _tpm_error(
                    "NV_DefineSpace",
                    exc,
                    "the owner hierarchy may have a password; meterbox needs an empty owner "
                    "auth to define its counter, or pre-define the index with tpm2_nvdefine",
                ) from exc
        self._nv[index] = handle
        self.increment(index, auth)
        return self.counter_info(index, auth)

    def _adopt(self, index: int, auth: bytes) -> CounterInfo:
        info = self.counter_info(index, auth)
        if not s.parse_nv_public(info.nv_public).attributes & s.NV_WRITTEN:
            self.increment(index, auth)
            info = self.counter_info(index, auth)
        return info

    def increment(self, index: int, auth: bytes) -> None:
        handle = self._nv_handle(index, auth)
        try:
            self._esys.nv_increment(handle)
        except TSS2_Exception as exc:
            raise _tpm_error(
                "NV_Increment",
                exc,
                "the counter's authValue may not match the one in the instance config, "
                "or the TPM rate-limits NV writes (retry later)",
            ) from exc

    def read_counter(self, index: int, auth: bytes) -> int:
        handle = self._nv_handle(index, auth)
        try:
            data = self._esys.nv_read(handle, COUNTER_SIZE)
        except TSS2_Exception as exc:
            raise _tpm_error("NV_Read", exc, "check the counter index and its authValue") from exc
        return int.from_bytes(bytes(data), "big")

    def delete_counter(self, index: int, auth: bytes) -> None:
        """Undefine an owner-created counter (platform-created ones refuse, by design)."""
        handle = self._nv_handle(index, auth)
        try:
            self._esys.nv_undefine_space(handle, ESYS_TR.OWNER)
        except TSS2_Exception as exc:
            raise _tpm_error(
                "NV_UndefineSpace", exc, "a platform-created counter cannot be deleted"
            ) from exc
        self._nv.pop(index, None)

    # Keys ---------------------------------------------------------------------------

    def _read_nv_blob(self, index: int) -> bytes:
        try:
            handle = self._esys.tr_from_tpmpublic(index)
        except TSS2_Exception as exc:
            raise NoSuchIndex(index) from exc
        try:
            public, _ = self._esys.nv_read_public(handle)
            size = int(public.nvPublic.dataSize)
            out = b""
            while len(out) < size:
                chunk = min(_NV_CHUNK, size - len(out))
                out += bytes(self._esys.nv_read(handle, chunk, len(out)))
            return out
        except TSS2_Exception as exc:
            raise _tpm_error("NV_Read (EK certificate)", exc, "check the EK index") from exc
        finally:
            self._esys.tr_close(handle)

    def _ek_template(self) -> tuple[Any, Any]:
        kind = "EK-ECC256"
        try:
            self._read_nv_blob(EK_CERT_ECC256)
        except NoSuchIndex:
            try:
                self._read_nv_blob(EK_CERT_RSA2048)
                kind = "EK-RSA2048"
            except NoSuchIndex:
                pass
        cert, template = create_ek_template(kind, self._read_nv_blob)
        return kind, (cert, template)

    def activate_credential(self, ak_handle: int, blob: bytes, secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK at ``ak_handle`` and the EK: the secret."""
        _, (_, template) = self._ek_template()
        ek: Any = None
        session: Any = None
        try:
            ek, *_ = self._esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
            ak = self._keys.get(ak_handle)
            if ak is None:
                ak = self._keys[ak_handle] = self._esys.tr_from_tpmpublic(ak_handle)
            # The EK template's authPolicy is PolicySecret(TPM_RH_ENDORSEMENT).
            session = self._esys.start_auth_session(
                ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, None, TPM2_ALG.SHA256
            )
            self._esys.policy_secret(ESYS_TR.ENDORSEMENT, session)
            blob_obj, _ = _TPM2B_ID_OBJECT.unmarshal(blob)
            secret_obj, _ = _TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
            released = self._esys.activate_credential(
                ak, ek, blob_obj, secret_obj, session1=ESYS_TR.PASSWORD, session2=session
            )
        except TSS2_Exception as exc:
            raise _tpm_error(
                "ActivateCredential",
                exc,
                "the challenge was made for another TPM's EK or another attestation key",
            ) from exc
        finally:
            for handle in (session, ek):
                if handle is not None:
                    # A policy session used by a command stays loaded; flush both.
                    with contextlib.suppress(TSS2_Exception):
                        self._esys.flush_context(handle)
        return bytes(released)

    def endorsement_key(self) -> EkInfo:
        """The EK (ECC P-256 if it has a certificate or none has one, else RSA 2048)."""
        if self._ek is not None:
            return self._ek
        kind, (cert, template) = self._ek_template()
        try:
            handle, public, *_ = self._esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
        except TSS2_Exception as exc:
            raise _tpm_error(
                "CreatePrimary (EK)", exc, "the endorsement hierarchy may have a password"
            ) from exc
        try:
            name = bytes(self._esys.tr_get_name(handle))
        finally:
            self._esys.flush_context(handle)
        raw = public.publicArea.marshal()
        self._ek = EkInfo(raw, name, None if cert is None else bytes(cert), kind)
        return self._ek

    @staticmethod
    def _ak_template() -> Any:
        t = TPMT_PUBLIC(type=TPM2_ALG.ECC, nameAlg=TPM2_ALG.SHA256, objectAttributes=_AK_ATTRS)
        t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG.NULL
        t.parameters.eccDetail.scheme.scheme = TPM2_ALG.ECDSA
        t.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG.SHA256
        t.parameters.eccDetail.curveID = TPM2_ECC.NIST_P256
        t.parameters.eccDetail.kdf.scheme = TPM2_ALG.NULL
        return t

    def attestation_key(self, handle: int = DEFAULT_AK_HANDLE) -> KeyInfo:
        """Load the persistent AK at ``handle``, creating and persisting it when absent."""
        try:
            tr = self._esys.tr_from_tpmpublic(handle)
        except TSS2_Exception:
            tr = None
        if tr is not None:
            public, name, _ = self._esys.read_public(tr)
            raw = public.publicArea.marshal()
            parsed = s.parse_public(raw)
            if (
                parsed.type != s.ALG_ECC
                or parsed.attributes != int(_AK_ATTRS)
                or parsed.curve != s.ECC_NIST_P256
                or parsed.scheme != s.ALG_ECDSA
            ):
                raise StateError(
                    "another key occupies the attestation key handle",
                    expected=f"meterbox's ECC P-256 restricted signing key at 0x{handle:08x}",
                    found=f"type 0x{parsed.type:04x}, attributes 0x{parsed.attributes:08x}",
                    hint="choose another persistent handle, or evict the key with "
                    "tpm2_evictcontrol if it is unused",
                )
            return KeyInfo(raw, bytes(name))
        try:
            tr, public, *_ = self._esys.create_primary(
                None, _TPM2B_PUBLIC(publicArea=self._ak_template()), ESYS_TR.ENDORSEMENT
            )
            name = bytes(self._esys.tr_get_name(tr))
            self._esys.evict_control(ESYS_TR.OWNER, tr, handle)
        except TSS2_Exception as exc:
            raise _tpm_error(
                "CreatePrimary/EvictControl (AK)",
                exc,
                "the endorsement or owner hierarchy may have a password, or persistent "
                "storage is full",
            ) from exc
        finally:
            if tr is not None:
                self._esys.flush_context(tr)
        return KeyInfo(public.publicArea.marshal(), name)

    def certify_counter(
        self, index: int, auth: bytes, ak_handle: int, qualifying: bytes
    ) -> tuple[bytes, bytes]:
        """TPM2_NV_Certify over the whole counter: the TPMS_ATTEST and TPMT_SIGNATURE bytes."""
        nv = self._nv_handle(index, auth)
        try:
            ak = self._keys.get(ak_handle)
            if ak is None:
                ak = self._keys[ak_handle] = self._esys.tr_from_tpmpublic(ak_handle)
            attest, signature = self._esys.nv_certify(
                ak, nv, qualifying, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), COUNTER_SIZE, 0
            )
        except TSS2_Exception as exc:
            raise _tpm_error(
                "NV_Certify", exc, "check that the attestation key exists (server init --tpm)"
            ) from exc
        return bytes(attest), signature.marshal()
