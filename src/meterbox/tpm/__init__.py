"""TPM 2.0 anchor: a monotonic NV counter the ledger advances, and signed reads of it.

Software alone cannot stop a customer who restores an old copy of the server's data
directory. A TPM NV counter cannot be decremented or reset, and one created again starts
above every value any counter on that TPM held, so a ledger that commits to the counter's
value on every advance shows a restored copy as "TPM ahead of ledger". Reports carry a
``TPM2_NV_Certify`` attestation of the counter, bound to the ledger head, which the vendor
checks against the attestation key it pinned at the first report.

Public API (everything else is private):

- :class:`Anchor` (protocol), :class:`TpmAnchor`, :class:`NullAnchor`: what the ledger calls.
- :class:`TpmDevice`: the shell over the TPM (tpm2-pytss), addressed by a TCTI string.
- :func:`verify_attestation`, :class:`TpmPins`, :class:`VerifiedAttestation` and the
  :class:`TpmFinding` errors: the vendor's pure verification core.
- :class:`AttestationBundle`, :func:`qualifying_data`, :func:`report_nonce`: the bundle format
  (docs/spec/tpm-attestation.md).
- :func:`make_credential_challenge`, :func:`check_credential_proof` (vendor) and
  :meth:`TpmAnchor.activate_credential` (server): binding the pinned AK to the EK.
- :func:`parse_ca_file`, :class:`TpmCa`: the TPM manufacturer CAs the vendor trusts for
  EK certificates (``vendor tpm-ca add``).
- :class:`TpmMode`, :func:`decide_mode`, :func:`judge_counter`, :func:`judge_identity`:
  pure decisions for ``server init --tpm`` and for opening a ledger.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from meterbox.tpm._anchor import Anchor, NullAnchor, TpmAnchor
from meterbox.tpm._bundle import AttestationBundle, qualifying_data, report_nonce
from meterbox.tpm._credential import (
    CredentialChallenge,
    check_credential_proof,
    credential_proof,
    make_credential_challenge,
)
from meterbox.tpm._ekca import TpmCa, parse_ca_file
from meterbox.tpm._policy import (
    DEFAULT_AK_HANDLE,
    DEFAULT_NV_INDEX,
    DEFAULT_TCTI,
    CounterVerdict,
    TpmDecision,
    TpmMode,
    TpmProbe,
    decide_mode,
    judge_counter,
    judge_identity,
)
from meterbox.tpm._verify import (
    TpmCounterRollback,
    TpmFinding,
    TpmMissing,
    TpmPins,
    TpmQuoteForeign,
    TpmQuoteForged,
    TpmQuoteReplayed,
    VerifiedAttestation,
    verify_attestation,
)

if _TYPE_CHECKING:
    from meterbox.tpm._device import TpmDevice


def __getattr__(name: str) -> _Any:
    # The TPM shell needs tpm2-pytss (the optional ``meterbox[tpm]`` extra, built against
    # the system's libtss2); everything else here, the vendor's verification included,
    # imports without it. ImportError from here means that extra is not installed.
    if name == "TpmDevice":
        from meterbox.tpm._device import TpmDevice

        return TpmDevice
    if name == "TpmAnchor":
        return TpmAnchor
    raise AttributeError(f"module 'meterbox.tpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "TpmDevice"})


__all__ = [
    "DEFAULT_AK_HANDLE",
    "DEFAULT_NV_INDEX",
    "DEFAULT_TCTI",
    "Anchor",
    "AttestationBundle",
    "CounterVerdict",
    "CredentialChallenge",
    "NullAnchor",
    "TpmAnchor",
    "TpmCa",
    "TpmCounterRollback",
    "TpmDecision",
    "TpmDevice",
    "TpmFinding",
    "TpmMissing",
    "TpmMode",
    "TpmPins",
    "TpmProbe",
    "TpmQuoteForeign",
    "TpmQuoteForged",
    "TpmQuoteReplayed",
    "VerifiedAttestation",
    "check_credential_proof",
    "credential_proof",
    "decide_mode",
    "judge_counter",
    "judge_identity",
    "make_credential_challenge",
    "parse_ca_file",
    "qualifying_data",
    "report_nonce",
    "verify_attestation",
]
