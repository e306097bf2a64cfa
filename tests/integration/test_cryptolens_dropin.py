"""The real Python SDK (``licensing`` 0.54) and .NET request shapes against the real server.

Every test runs the real server process on a site whose licenses use the format-2
Cryptolens fields (see :mod:`support.cryptolens_site`): node-locked activation of
the first ``max_machines`` codes, a credit countdown, a feature template. The SDK is
used exactly as its own examples use it; the only change an application makes is
``HelperMethods.server_address``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from licensing.internal import HelperMethods
from licensing.methods import Data, Helpers, Key
from licensing.models import LicenseKey
from typer.testing import CliRunner

from meterbox.cli import app
from meterbox.compat import LIMIT_REACHED_MESSAGE, SIGN_METHOD_FLOATING_MESSAGE
from meterbox.ledger import RecordType
from meterbox.vendorkit.billing import Period, bill
from meterbox.vendorkit.ingest import ingest
from support.cryptolens_site import (
    ALLOWED,
    KEY,
    LOCKED_KEY,
    PRODUCT,
    TOKEN,
    Site,
    check_dotnet_license_key,
    make_site,
)
from support.server_proc import ServerProcess

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "cryptolens"

#: A server process start may take long on a loaded two-core machine.
START_TIMEOUT = 180.0


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def server(site: Site, tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(site.data, tmp_path / "server.log")
    proc.start(timeout=START_TIMEOUT)
    previous = HelperMethods.server_address
    HelperMethods.server_address = proc.url + "/api/"
    try:
        yield proc
    finally:
        HelperMethods.server_address = previous
        proc.stop()


def _activate(site: Site, code: str, key: str = KEY, **kw: Any) -> tuple[Any, str]:
    result: tuple[Any, str] = Key.activate(TOKEN, site.public_xml, PRODUCT, key, code, **kw)
    return result


def _ok(result: tuple[Any, str]) -> None:
    assert result[0] is not None, result[1]
    assert result[1] == ""


def _values(key: str = KEY) -> dict[int, int]:
    reply, message = Data.list_key_data_objects(TOKEN, PRODUCT, key)
    assert reply is not None, message
    return {o["id"]: o["intValue"] for o in reply["dataObjects"]}


# ------------------------------------------------------------ node-locked
def test_the_python_readme_example_works_unchanged_node_locked(
    site: Site, server: ServerProcess
) -> None:
    """The README's key verification, verbatim but for the placeholders."""
    RSAPubKey = site.public_xml  # noqa: N806 - the README's names
    auth = TOKEN
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = Key.activate(
            token=auth,
            rsa_pub_key=RSAPubKey,
            product_id=3349,
            key=KEY,
            machine_code=Helpers.GetMachineCode(v=2),
        )
        if result[0] is None or not Helpers.IsOnRightMachine(result[0], v=2):
            print(f"The license does not work: {result[1]}")
        else:
            print("The license is valid!")
            license_key = result[0]
            print("Feature 1: " + str(license_key.f1))
            print("License expires: " + str(license_key.expires))
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["The license is valid!", "Feature 1: True"], lines
    assert lines[2].startswith("License expires: ")


def test_node_locked_takes_the_first_five_codes_and_the_allowed_machine_always(
    site: Site, server: ServerProcess
) -> None:
    mine = Helpers.GetMachineCode()
    first, message = _activate(site, mine)
    assert first is not None, message
    assert first.max_no_of_machines == 5
    assert Helpers.IsOnRightMachine(first)
    for n in range(4):
        assert _activate(site, f"machine-{n}")[0] is not None
    assert _activate(site, "machine-6") == (None, LIMIT_REACHED_MESSAGE)
    # Pre-listed in the license: always activates, uses no slot.
    allowed, message = _activate(site, ALLOWED)
    assert allowed is not None, message
    assert len(allowed.activated_machines) == 6
    # A known machine re-activates whatever the limit.
    assert _activate(site, mine)[0] is not None
    # Deactivation frees a slot on this license.
    assert Key.deactivate(TOKEN, PRODUCT, KEY, "machine-0") == (True, "")
    assert _activate(site, "machine-6")[0] is not None


def test_a_license_that_forbids_deactivation_keeps_its_machine(
    site: Site, server: ServerProcess
) -> None:
    license_key, message = _activate(site, "only-one", key=LOCKED_KEY)
    assert license_key is not None, message
    assert license_key.trial_activation is True
    assert _activate(site, "second", key=LOCKED_KEY) == (None, LIMIT_REACHED_MESSAGE)
    ok, message = Key.deactivate(TOKEN, PRODUCT, LOCKED_KEY, "only-one")
    assert ok is False
    assert message.startswith("This license does not allow deactivating")
    assert _activate(site, "second", key=LOCKED_KEY) == (None, LIMIT_REACHED_MESSAGE)
    # Floating on a license without floating seats says so (not "limit reached").
    refused = _activate(site, "only-one", key=LOCKED_KEY, floating_time_interval=60)
    assert refused[0] is None
    assert refused[1].startswith("This license has no floating seats.")


# ---------------------------------------------------------- floating
def test_floating_and_overdraft_with_a_lease_longer_than_a_day(
    site: Site, server: ServerProcess
) -> None:
    two_days = 2 * 86_400
    a, message = _activate(site, "fa", floating_time_interval=two_days)
    assert a is not None, message
    expires = a.activated_machines[0].FloatingExpires
    signed = a.sign_date.timestamp()
    assert two_days - 5 <= expires - signed <= two_days + 5, "FloatingTimeInterval was cut"
    assert _activate(site, "fb", floating_time_interval=60)[0] is not None
    assert _activate(site, "fc", floating_time_interval=60) == (None, LIMIT_REACHED_MESSAGE)
    over, message = _activate(site, "fc", floating_time_interval=60, max_overdraft=1)
    assert over is not None, message
    assert [m.Mid for m in over.activated_machines] == ["floating:overdraft:fc"]
    assert Helpers.IsOnRightMachine(
        over, is_floating_license=True, allow_overdraft=True, custom_machine_code="fc"
    )


# ------------------------------------------------------------ data objects
def test_credit_countdown_with_bound_and_feature_template(
    site: Site, server: ServerProcess
) -> None:
    # The data-object tutorials' credit pattern: decrement towards 0 with a bound.
    for _ in range(3):
        _ok(
            Data.decrement_int_value_to_key(
                TOKEN, PRODUCT, KEY, 1, int_value=30, enable_bound=True, bound=0
            )
        )
    refused = Data.decrement_int_value_to_key(
        TOKEN, PRODUCT, KEY, 1, int_value=30, enable_bound=True, bound=0
    )
    assert refused[0] is None
    assert "would cross its bound" in refused[1]
    # An increment of a countdown gives credit back, never more than it charged.
    _ok(Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 1, int_value=5))
    too_much = Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 1, int_value=100)
    assert too_much[0] is None
    assert "an increment of at most 85" in too_much[1]
    _ok(Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 2, int_value=7))
    assert _values() == {1: 15, 2: 7, 3: 0}
    license_key, message = _activate(site, Helpers.GetMachineCode())
    assert license_key is not None, message
    assert {d["Id"]: d["IntValue"] for d in license_key.data_objects} == {1: 15, 2: 7, 3: 0}
    assert Helpers.HasFeature(license_key, "f1")
    assert Helpers.HasFeature(license_key, "f2")
    assert Helpers.HasFeature(license_key, "f2.voice")
    assert not Helpers.HasFeature(license_key, "f2.video")
    assert not Helpers.HasFeature(license_key, "f3")
    # The template is the vendor's: clients cannot change it.
    fixed = Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 3, int_value=1)
    assert fixed[0] is None
    assert "cannot be changed" in fixed[1]


def test_data_object_usage_is_in_the_vendor_ingest_totals_and_the_bill(
    site: Site, server: ServerProcess, tmp_path: Path
) -> None:
    assert Data.decrement_int_value_to_key(TOKEN, PRODUCT, KEY, 1, int_value=40)[0]
    assert Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 1, int_value=10)[0]
    assert Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, 2, int_value=6)[0]
    assert _activate(site, "node-a")[0] is not None
    report = site.export(server.url)
    records = site.records(report)
    usage = [
        (r.type, r.payload["m"], r.payload["a"], r.payload["c"])
        for r in records
        if r.type in (RecordType.USAGE, RecordType.USAGE_DECREMENT)
    ]
    assert usage == [
        (RecordType.USAGE, "credits", 40, "cryptolens/1"),
        (RecordType.USAGE_DECREMENT, "credits", 10, "cryptolens/1"),
        (RecordType.USAGE, "runs", 6, "cryptolens/2"),
    ]
    activations = [
        (r.payload["l"], r.payload["c"]) for r in records if r.type == RecordType.MACHINE_ACTIVATED
    ]
    assert activations == [("lic-dropin", "node-a")]
    path = tmp_path / "report.mbr"
    path.write_bytes(report)
    outcome = ingest(site.home, path, receipt_out=tmp_path / "receipt")
    assert outcome.accepted, outcome.findings
    assert dict(outcome.totals) == {"credits": 30, "runs": 6}
    month = datetime.fromtimestamp(records[-1].wall_ms / 1000, UTC)
    statement = bill(site.home, Period(month.year, month.month))
    lines = {(m.license_id, m.meter): m.used for m in statement.meters}
    assert lines[("lic-dropin", "credits")] == 30
    assert lines[("lic-dropin", "runs")] == 6
    # The vendor sees the node-locked activations against the license's limit.
    listed = CliRunner().invoke(app, ["vendor", "licenses", "--home", str(site.home)])
    assert listed.exit_code == 0, listed.output
    row = next(line for line in listed.output.splitlines() if "lic-dropin" in line)
    assert f"{PRODUCT} {KEY}" in row
    assert "1/5" in row


# ---------------------------------------------------- signature age, kill -9
def test_saved_license_checks_signature_age(site: Site, server: ServerProcess) -> None:
    license_key, message = _activate(site, "aged")
    assert license_key is not None, message
    # SignDate is the server's now, so a freshly saved license passes a 1-day check.
    assert abs(license_key.sign_date.timestamp() - time.time()) < 30
    saved = license_key.save_as_string()
    assert LicenseKey.load_from_string(site.public_xml, saved, 1) is not None
    # An old signed reply (a checked-in vector, signed at its fixed clock) is refused by
    # a check shorter than its age and accepted by a longer one.
    vector = json.loads((VECTORS / "activate-floating.json").read_text())
    public = (VECTORS / "public-key.xml").read_text().strip()
    old = json.dumps(vector["reply"])
    age_days = int((time.time() - vector["now"]) // 86_400)
    assert age_days >= 2
    assert LicenseKey.load_from_string(public, old, age_days - 1) is None
    assert LicenseKey.load_from_string(public, old, age_days + 2) is not None
    # An edited copy fails the signature whatever the age allowed.
    response = json.loads(saved)
    obj = json.loads(base64.b64decode(response["licenseKey"]))
    obj["MaxNoOfMachines"] = 500
    response["licenseKey"] = base64.b64encode(json.dumps(obj).encode()).decode()
    assert LicenseKey.load_from_string(site.public_xml, json.dumps(response), 30) is None


def test_activations_values_and_long_leases_survive_kill_9(
    site: Site, server: ServerProcess
) -> None:
    for code in ("k1", "k2", "k3", "k4", "k5"):
        assert _activate(site, code)[0] is not None
    assert Data.decrement_int_value_to_key(TOKEN, PRODUCT, KEY, 1, int_value=25)[0]
    floating, _ = _activate(site, "fl", floating_time_interval=3 * 86_400)
    assert floating is not None
    before = floating.activated_machines[0].FloatingExpires
    server.kill9()
    server.start(timeout=START_TIMEOUT)
    assert _activate(site, "k6") == (None, LIMIT_REACHED_MESSAGE)
    assert _values()[1] == 75
    license_key, message = Key.get_key(TOKEN, site.public_xml, PRODUCT, KEY)
    assert license_key is not None, message
    mids = {m.Mid: m.FloatingExpires for m in license_key.activated_machines}
    assert {"k1", "k2", "k3", "k4", "k5"} <= set(mids)
    assert mids["floating:fl"] == before


# ------------------------------------------------------- .NET request shapes
def _post(url: str, path: str, fields: dict[str, str]) -> dict[str, Any]:
    reply = httpx.post(
        url + path,
        content=urllib.parse.urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    body: dict[str, Any] = reply.json()
    assert isinstance(body["result"], int)
    assert isinstance(body["message"], str)
    return body


def _dotnet_activate(**extra: str) -> dict[str, str]:
    """``ActivateModel`` as the .NET SDK encodes it (True/False, OSInfo, v, modelversion)."""
    return {
        "token": TOKEN,
        "ProductId": str(PRODUCT),
        "Key": KEY,
        "MachineCode": "",
        "FieldsToReturn": "0",
        "Metadata": "False",
        "FloatingTimeInterval": "0",
        "MaxOverdraft": "0",
        "FriendlyName": "",
        "OSInfo": '{"Name":"Windows","Version":"10"}',
        "Sign": "True",
        "SignMethod": "StringSign",
        "ModelVersion": "3",
        "v": "1",
        **extra,
    }


def test_dotnet_shapes_get_replies_the_dotnet_models_parse(
    site: Site, server: ServerProcess
) -> None:
    url = server.url
    node = _post(url, "/api//key/activate/", _dotnet_activate())
    assert node["result"] == 0, node
    floating = _post(
        url,
        "/api//key/activate/",
        _dotnet_activate(MachineCode="PC-1", FloatingTimeInterval="600", Metadata="True"),
    )
    assert floating["result"] == 0, floating
    assert isinstance(floating["metadata"]["signature"], str)
    getkey = _post(
        url,
        "/api//key/getkey/",
        {k: v for k, v in _dotnet_activate().items() if k != "MachineCode"},
    )
    assert getkey["result"] == 0, getkey
    for reply in (node, floating, getkey):
        obj = json.loads(base64.b64decode(reply["licenseKey"]))
        assert check_dotnet_license_key(obj) == []
    empty_code = json.loads(base64.b64decode(node["licenseKey"]))
    assert [m["Mid"] for m in empty_code["ActivatedMachines"]] == [""]
    # The .NET models' default SignMethod (LinqSign) gets the documented answers.
    linq = _post(
        url,
        "/api//key/activate/",
        _dotnet_activate(MachineCode="PC-2", FloatingTimeInterval="600", SignMethod="LinqSign"),
    )
    assert linq == {"result": 1, "message": SIGN_METHOD_FLOATING_MESSAGE}
    linq_node = _post(url, "/api//key/activate/", _dotnet_activate(SignMethod="LinqSign"))
    assert linq_node["result"] == 1
    assert linq_node["message"].startswith(
        "License server error: SignMethod=1 is needed to sign the license offline."
    )
    # Data calls: ChangeIntValueModel's IntValue is an Int32.
    change = {"token": TOKEN, "ProductId": str(PRODUCT), "Key": KEY, "Id": "2", "v": "1"}
    assert _post(url, "/api//data/IncrementIntValueToKey/", {**change, "IntValue": "3"}) == {
        "result": 0,
        "message": "",
    }
    huge = _post(url, "/api//data/IncrementIntValueToKey/", {**change, "IntValue": str(2**31)})
    assert huge["result"] == 1
    listed = _post(url, "/api//data/ListDataObjectsToKey/", {**change, "Contains": ""})
    assert [o["intValue"] for o in listed["dataObjects"]] == [100, 3, 0]
    deactivated = _post(
        url, "/api//key/deactivate/", {**change, "MachineCode": "PC-1", "Floating": "True"}
    )
    assert deactivated == {"result": 0, "message": ""}


def test_an_invalid_parameter_takes_no_seat(site: Site, server: ServerProcess) -> None:
    bad = _post(
        server.url,
        "/api//key/activate/",
        _dotnet_activate(MachineCode="PC-9", FloatingTimeInterval="600", Metadata="maybe"),
    )
    assert bad["result"] == 1
    assert "parameter metadata is not a boolean" in bad["message"]
    for code in ("PC-1", "PC-2"):
        ok = _post(
            server.url,
            "/api//key/activate/",
            _dotnet_activate(MachineCode=code, FloatingTimeInterval="600"),
        )
        assert ok["result"] == 0, ok
