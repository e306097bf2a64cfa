"""A vendor home, a format-2 Cryptolens license and a real server site, for the SDK tests.

No tests of its own. :func:`make_site` signs two licenses with Cryptolens sections
(recorded in the vendor store, as ``meterbox vendor issue`` does, so they are billed)
and initialises a server data directory; the tests run ``meterbox server run`` on it
with :class:`support.server_proc.ServerProcess`. :func:`check_dotnet_license_key`
checks a decoded ``licenseKey`` against the .NET SDK's model types.

License ``lic-dropin`` (product 3349, key ``DROPI-NLICE-NSEAB-CDEFG``):

- floating feature ``cad``: 2 seats + 1 overdraft seat;
- node-locked: ``max_machines`` 5, ``BUILD-SERVER`` pre-listed;
- data objects: 1 ``credits`` (a countdown from 100, drawn from meter ``credits``,
  limit 1000), 2 ``usage`` (counts up on meter ``runs``, limit 50), 3
  ``cryptolens_features`` (the template ``["f1",["f2",["voice","image"]]]``).

License ``lic-locked`` (key ``LOCKE-DONEM-ACHIN-EONLY``): node-locked only, one
machine, deactivation not allowed, trial activation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from meterbox.compat import CryptolensSigner
from meterbox.ledger import Record, ReportVerifier
from meterbox.licenses import CryptolensSection, DataObject, Feature, License, Meter
from meterbox.server._instance import init_server
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys

PRODUCT = 3349
KEY = "DROPI-NLICE-NSEAB-CDEFG"
LOCKED_KEY = "LOCKE-DONEM-ACHIN-EONLY"
TOKEN = "WyIyNTU1IiwiRjdZZTB4RmtuTVcrQlNqcSszbmFMMHB3aWFJTlBsWW1Mbm9raVFyRyJd"
ALLOWED = "BUILD-SERVER"
TEMPLATE = '["f1",["f2",["voice","image"]]]'

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Site:
    home: Path
    data: Path
    public_xml: str
    admin_token: str
    license: License

    def export(self, url: str) -> bytes:
        reply = httpx.post(
            f"{url}/v1/admin/export",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return reply.content

    def records(self, report: bytes) -> list[Record]:
        keys = vendor_keys.VendorKeys.load(self.home)
        verifier = ReportVerifier({kid: keys.ledger_private(kid) for kid in keys.pairs})
        records = [r for r, _ in verifier.records(io.BytesIO(report))]
        assert not verifier.result.critical, verifier.result.findings
        return records


def make_site(root: Path) -> Site:
    home, data = root / "vendor", root / "server"
    keys = vendor_keys.init(home)
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    main = License(
        license_id="lic-dropin",
        customer="ACME Labs",
        product="Solver",
        issued=issued,
        vendor_key_id=keys.current_id.hex(),
        features={"cad": Feature(seats=2, overdraft=1, lease_seconds=60)},
        meters={"credits": Meter(limit=1000), "runs": Meter(limit=50)},
        expires=issued + timedelta(days=365),
        cryptolens=CryptolensSection(
            product_id=PRODUCT,
            key=KEY,
            feature="cad",
            flags=(True, False, True, False, False, False, False, False),
            notes="drop-in",
            allowed_machines=(ALLOWED,),
            data_objects=(
                DataObject(1, "credits", "credits", "", 100, "decrement"),
                DataObject(2, "usage", "runs", "", 0),
                DataObject(3, "cryptolens_features", None, TEMPLATE),
            ),
            max_machines=5,
        ),
    )
    locked = License(
        license_id="lic-locked",
        customer="ACME Labs",
        product="Solver",
        issued=issued,
        vendor_key_id=keys.current_id.hex(),
        meters={"exports": Meter(limit=None)},
        cryptolens=CryptolensSection(
            product_id=PRODUCT,
            key=LOCKED_KEY,
            max_machines=1,
            trial_activation=True,
            allow_deactivation=False,
        ),
    )
    files = []
    with VendorStore.open(home=home) as store:
        for lic in (main, locked):
            assert lic.format_version == 2
            document = lic.sign(keys.signer())
            path = root / f"{lic.license_id}.lic"
            path.write_bytes(document)
            store.add_license(lic, document)
            files.append(path)
    init_server(data, vendor_pub=home / "vendor.pub", license_files=files, fingerprint="x")
    public_xml = CryptolensSigner.load(data / "cryptolens.pem").public_key_xml()
    token = (data / "admin.token").read_text().strip()
    return Site(home, data, public_xml, token, main)


# ------------------------------------------------------------- .NET model types
def _is_int(value: object, bounds: tuple[int, int]) -> bool:
    return (
        isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]
    )


#: The .NET SDK's ``LicenseKey`` (SKM.V3.Models): field -> type, as it deserialises them.
_LICENSE_KEY: dict[str, str] = {
    "ProductId": "int",
    "ID": "int",
    "Key": "string",
    "Created": "long",
    "Expires": "long",
    "Period": "int",
    **{f"F{i}": "bool" for i in range(1, 9)},
    "Notes": "string",
    "Block": "bool",
    "GlobalId": "long",
    "Customer": "customer",
    "ActivatedMachines": "machines",
    "TrialActivation": "bool",
    "MaxNoOfMachines": "int",
    "AllowedMachines": "string",
    "DataObjects": "objects",
    "SignDate": "long",
    "Reseller": "null",
}
_MACHINE = {"IP": "string", "Mid": "string", "Time": "long", "FriendlyName": "string",
            "FloatingExpires": "long"}  # fmt: skip
_OBJECT = {"Id": "int", "Name": "string", "StringValue": "string", "IntValue": "int"}
_CUSTOMER = {"Id": "int", "Name": "string", "Email": "string", "CompanyName": "string",
             "Created": "long"}  # fmt: skip


def _check(value: Any, kind: str, where: str, problems: list[str]) -> None:
    ok = {
        "int": lambda v: _is_int(v, INT32),
        "long": lambda v: _is_int(v, INT64),
        "bool": lambda v: isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "null": lambda v: v is None,
    }
    if kind in ok:
        if not ok[kind](value):
            problems.append(f"{where}={value!r} is not a .NET {kind}")
        return
    if kind == "customer":
        if value is not None:
            _check_object(value, _CUSTOMER, where, problems)
        return
    if not isinstance(value, list):
        problems.append(f"{where} is {value!r}, not an array (the .NET SDK crashes on null)")
        return
    fields = _MACHINE if kind == "machines" else _OBJECT
    for index, item in enumerate(value):
        _check_object(item, fields, f"{where}[{index}]", problems)


def _check_object(value: Any, fields: dict[str, str], where: str, problems: list[str]) -> None:
    if not isinstance(value, dict) or set(value) != set(fields):
        problems.append(f"{where} has fields {sorted(value) if isinstance(value, dict) else value}")
        return
    for name, kind in fields.items():
        _check(value[name], kind, f"{where}.{name}", problems)


def check_dotnet_license_key(obj: dict[str, Any]) -> list[str]:
    """Every way ``obj`` would not deserialise into the .NET ``LicenseKey`` (empty: fine)."""
    problems: list[str] = []
    _check_object(obj, _LICENSE_KEY, "LicenseKey", problems)
    return problems
