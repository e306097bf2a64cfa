"""The ledger's view of a hardware anchor: a counter that only goes up, and attestations of it.

The ledger writer holds one :class:`Anchor`. For every advance it commits the returned
counter value into the record it writes, so the chain binds each value; at open it
compares :meth:`Anchor.read` with the last committed value (``judge_counter``); a report
carries :meth:`Anchor.attest` over the head it ends at. :class:`TpmAnchor` is the real
one; :class:`NullAnchor` stands in on machines without a TPM and attests nothing.

Order matters for crash safety: the writer durably notes the value it is about to reach
(``pending = committed + 1``, or the TPM's value + 1), calls :meth:`Anchor.advance`, then
commits the record with the returned value. See docs/spec/tpm-attestation.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from meterbox.errors import FormatError, StateError
from meterbox.tpm._bundle import HEAD_LEN, NONCE_LEN, AttestationBundle, qualifying_data
from meterbox.tpm._credential import CredentialChallenge, credential_proof
from meterbox.tpm._policy import DEFAULT_AK_HANDLE, DEFAULT_NV_INDEX
from meterbox.tpm._structs import parse_nv_attest

if TYPE_CHECKING:
    # Only the shell talks to tpm2-pytss; an anchor is handed an open device.
    from meterbox.tpm._device import TpmDevice


@runtime_checkable
class Anchor(Protocol):
    @property
    def present(self) -> bool:
        """Whether a TPM backs this anchor (``attest`` works only then)."""
        ...

    def advance(self, head_hash: bytes) -> int:
        """Advance the counter for the batch ending at ``head_hash``; the new value."""
        ...

    def read(self) -> int:
        """The counter's current value."""
        ...

    def attest(self, head_hash: bytes, nonce: bytes) -> bytes:
        """A ``meterbox-tpm-attestation/1`` bundle over the counter, bound to head and nonce."""
        ...

    def identity(self) -> dict[str, object]:
        """JSON-ready identity to record in the genesis (hex strings and plain values)."""
        ...


def _check_hash(value: bytes, what: str, length: int) -> None:
    if len(value) != length:
        raise FormatError(
            f"{what} has the wrong length",
            expected=f"{length} bytes",
            found=f"{len(value)} bytes",
            hint="pass the SHA-256 ledger head hash and a 32-byte nonce",
        )


class NullAnchor:
    """No TPM: the counter stays at 0 and nothing can be attested."""

    present = False

    def advance(self, head_hash: bytes) -> int:
        _check_hash(head_hash, "head hash", HEAD_LEN)
        return 0

    def read(self) -> int:
        return 0

    def attest(self, head_hash: bytes, nonce: bytes) -> bytes:
        raise StateError(
            "there is no TPM to attest with",
            expected="a TPM anchor",
            found="the null anchor (server initialised with --tpm off, or no TPM found)",
            hint="check anchor.present before asking for an attestation",
        )

    def identity(self) -> dict[str, object]:
        return {"tpm": "none"}


class TpmAnchor:
    """An NV counter and an attestation key on one TPM.

    The counter's value is all the TPM holds: an NV counter cannot store the head, so
    ``advance`` takes the head only to check the caller passes one; binding value and
    head is the ledger record's job, and the attestation's (it signs both).
    """

    present = True

    def __init__(
        self,
        device: TpmDevice,
        counter_auth: bytes,
        *,
        nv_index: int = DEFAULT_NV_INDEX,
        ak_handle: int = DEFAULT_AK_HANDLE,
    ) -> None:
        self._dev = device
        self._auth = counter_auth
        self._index = nv_index
        self._ak_handle = ak_handle
        self._counter = device.counter_info(nv_index, counter_auth)
        self._ak = device.attestation_key(ak_handle)
        self._ek = device.endorsement_key()

    @classmethod
    def initialise(
        cls,
        device: TpmDevice,
        counter_auth: bytes,
        *,
        nv_index: int = DEFAULT_NV_INDEX,
        ak_handle: int = DEFAULT_AK_HANDLE,
    ) -> TpmAnchor:
        """Create (or adopt) the counter and the AK, for ``server init``."""
        device.create_counter(nv_index, counter_auth)
        device.attestation_key(ak_handle)
        return cls(device, counter_auth, nv_index=nv_index, ak_handle=ak_handle)

    def advance(self, head_hash: bytes) -> int:
        _check_hash(head_hash, "head hash", HEAD_LEN)
        self._dev.increment(self._index, self._auth)
        return self._dev.read_counter(self._index, self._auth)

    def read(self) -> int:
        return self._dev.read_counter(self._index, self._auth)

    def attest(self, head_hash: bytes, nonce: bytes) -> bytes:
        _check_hash(head_hash, "head hash", HEAD_LEN)
        _check_hash(nonce, "nonce", NONCE_LEN)
        attest, signature = self._dev.certify_counter(
            self._index, self._auth, self._ak_handle, qualifying_data(nonce, head_hash)
        )
        counter = int.from_bytes(parse_nv_attest(attest).nv_contents, "big")
        return AttestationBundle(
            attest=attest,
            signature=signature,
            ak_public=self._ak.public,
            ek_public=self._ek.public,
            ek_cert=self._ek.cert,
            nv_public=self._counter.nv_public,
            counter=counter,
            nonce=nonce,
            head=head_hash,
        ).to_bytes()

    def activate_credential(self, challenge: bytes) -> bytes:
        """Answer a vendor's credential challenge: the proof the next report carries."""
        parsed = CredentialChallenge.from_bytes(challenge)
        if parsed.ak_name != self._ak.name:
            raise StateError(
                "credential challenge is for another attestation key",
                expected=f"AK Name {self._ak.name.hex()}",
                found=parsed.ak_name.hex(),
                hint="the receipt was made for another instance or another TPM",
            )
        secret = self._dev.activate_credential(self._ak_handle, parsed.blob, parsed.secret)
        return credential_proof(secret, self._ak.name)

    def identity(self) -> dict[str, object]:
        return {
            "tpm": "tpm2",
            "tcti": self._dev.tcti,
            "ek_name": self._ek.name.hex(),
            "ek_kind": self._ek.kind,
            "ek_cert": self._ek.cert is not None,
            "ak_name": self._ak.name.hex(),
            "ak_handle": self._ak_handle,
            "nv_index": self._index,
            "nv_name": self._counter.name.hex(),
            "owner_deletable": self._counter.owner_deletable,
        }
