"""meterbox.compat: the HTTP API that Cryptolens client SDKs speak, served by meterbox.

Applications built on the Cryptolens SDKs (PyPI ``licensing`` 0.54, npm
``cryptolens`` 1.0.11, .NET)
point their server address at a meterbox server and keep working: floating
seats map onto meterbox seats with leases and overdraft, node-locked
activations onto sealed machine activations, data objects onto meters
recorded in the sealed ledger, and license responses are signed with
the server's RSA-2048 key in the exact format the SDKs verify.

The request layer is a pure service over the :class:`CryptolensBackend`
protocol; the server wires that protocol onto its engine. See
``docs/spec/cryptolens-compat.md`` and ``docs/adr/0004-cryptolens-compat.md``.
"""

from meterbox.compat.app import create_cryptolens_app, with_cryptolens_api
from meterbox.compat.backend import (
    NEVER_EXPIRES,
    ActivatedMachine,
    CryptolensBackend,
    CryptolensLicenseView,
    CustomerView,
    DataObjectView,
    numeric_license_id,
)
from meterbox.compat.errors import (
    LIMIT_REACHED_MESSAGE,
    SIGN_METHOD_FLOATING_MESSAGE,
    BoundExceeded,
    CryptolensRequestError,
    DeactivationNotAllowed,
    LicenseKeyBlocked,
    MachineNotAllowed,
    NotFloating,
    ReadOnlyDataObject,
    SignMethodRequired,
    UnknownDataObject,
    UnknownLicenseKey,
)
from meterbox.compat.service import CryptolensService
from meterbox.compat.signer import CryptolensSigner, public_key_from_xml, public_key_to_xml
from meterbox.compat.wire import CryptolensLimitsConfig

__all__ = [
    "LIMIT_REACHED_MESSAGE",
    "NEVER_EXPIRES",
    "SIGN_METHOD_FLOATING_MESSAGE",
    "ActivatedMachine",
    "BoundExceeded",
    "CryptolensBackend",
    "CryptolensLicenseView",
    "CryptolensRequestError",
    "CryptolensService",
    "CryptolensSigner",
    "CustomerView",
    "DataObjectView",
    "DeactivationNotAllowed",
    "LicenseKeyBlocked",
    "CryptolensLimitsConfig",
    "MachineNotAllowed",
    "NotFloating",
    "ReadOnlyDataObject",
    "SignMethodRequired",
    "UnknownDataObject",
    "UnknownLicenseKey",
    "create_cryptolens_app",
    "numeric_license_id",
    "public_key_from_xml",
    "public_key_to_xml",
    "with_cryptolens_api",
]
