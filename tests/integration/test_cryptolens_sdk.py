"""The real Cryptolens Python SDK (PyPI ``licensing`` 0.54) against a real meterbox HTTP server.

The compat app runs under uvicorn on 127.0.0.1 with the in-memory test
backend; the SDK is driven exactly as applications drive it, through
``HelperMethods.server_address``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from licensing.internal import HelperMethods
from licensing.methods import Data, Helpers, Key
from licensing.models import LicenseKey
from starlette.applications import Starlette
from starlette.routing import Mount

from meterbox.clock import SystemClock
from meterbox.compat import (
    LIMIT_REACHED_MESSAGE,
    SIGN_METHOD_FLOATING_MESSAGE,
    CryptolensLicenseView,
    CryptolensSigner,
    CustomerView,
    DataObjectView,
    create_cryptolens_app,
)
from meterbox.compat.memory import InMemoryBackend
from meterbox.compat.signer import public_key_to_xml

PRODUCT = 3349
FLOATING_KEY = "FLOAT-AAAA-BBBB-CCCC"
NODE_KEY = "NODE-AAAA-BBBB-CCCC"
TOKEN = "any-token-is-ignored"
NODE_MACHINE = "9f2c1e" * 10


class Clock(SystemClock):
    """Real time plus an offset (seconds) the tests move forward to expire leases."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = 0.0

    def wall_ms(self) -> int:
        return super().wall_ms() + int(self.offset * 1000)


@dataclass
class Server:
    port: int
    public_xml: str
    clock: Clock

    def post(self, path: str, body: bytes, content_type: str | None = None) -> tuple[int, dict]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body)
        if content_type is not None:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())


def _licenses(now: int) -> list[tuple[CryptolensLicenseView, list[DataObjectView]]]:
    floating = CryptolensLicenseView(
        license_id="lic-floating",
        product_id=PRODUCT,
        key=FLOATING_KEY,
        id=41,
        created=now - 86_400,
        expires=now + 30 * 86_400,
        features=(True, False, True, False, False, False, False, True),
        notes="floating test license",
        customer=CustomerView(7, "Ada", "ada@example.org", "Lab", now - 86_400),
        max_no_of_machines=2,
        max_overdraft=1,
        floating=True,
    )
    node = CryptolensLicenseView(
        license_id="lic-node",
        product_id=PRODUCT,
        key=NODE_KEY,
        id=42,
        created=now - 86_400,
        max_no_of_machines=1,
        allowed_machines=(NODE_MACHINE,),
    )
    objects = [DataObjectView(7, "usage", "", 3), DataObjectView(8, "exports", "csv", 0)]
    return [(floating, objects), (node, [DataObjectView(1, "cryptolens_features", '["f1"]', 0)])]


@pytest.fixture
def server() -> Iterator[Server]:
    clock = Clock()
    signer = CryptolensSigner(_SIGNING_KEY)
    backend = InMemoryBackend(_licenses(clock.wall_ms() // 1000), clock)
    compat = create_cryptolens_app(backend, signer, clock)
    outer = Starlette(routes=[Mount("/api", compat)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(outer, log_level="warning", lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    previous = HelperMethods.server_address
    HelperMethods.server_address = f"http://127.0.0.1:{port}/api/"
    try:
        yield Server(port, signer.public_key_xml(), clock)
    finally:
        HelperMethods.server_address = previous
        uv.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _make_key():  # one RSA-2048 key per test run: generation is the slow part
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


_SIGNING_KEY = _make_key()


def _activate(server: Server, machine: str, **kwargs):
    return Key.activate(
        TOKEN,
        server.public_xml,
        PRODUCT,
        FLOATING_KEY,
        machine,
        floating_time_interval=kwargs.pop("interval", 100),
        **kwargs,
    )


def test_floating_activations_fill_seats_then_refuse_with_exact_message(server: Server) -> None:
    first = _activate(server, "machine-a", friendly_name="alice")
    second = _activate(server, "machine-b")
    assert first[0] is not None, first[1]
    assert second[0] is not None, second[1]
    third = _activate(server, "machine-c")
    assert third == (None, LIMIT_REACHED_MESSAGE)
    # Renewing a live seat is always possible, and lists only this machine.
    again = _activate(server, "machine-a")
    assert again[0] is not None
    assert [m.Mid for m in again[0].activated_machines] == ["floating:machine-a"]
    assert Helpers.IsOnRightMachine(
        again[0], is_floating_license=True, custom_machine_code="machine-a"
    )
    assert not Helpers.IsOnRightMachine(
        again[0], is_floating_license=True, custom_machine_code="machine-b"
    )


def test_overdraft_seat_is_granted_up_to_the_license_cap(server: Server) -> None:
    for code in ("machine-a", "machine-b"):
        assert _activate(server, code)[0] is not None
    # The client asks for 5 overdraft seats; the license allows 1.
    over = _activate(server, "machine-c", max_overdraft=5)
    assert over[0] is not None, over[1]
    assert [m.Mid for m in over[0].activated_machines] == ["floating:overdraft:machine-c"]
    assert Helpers.IsOnRightMachine(
        over[0], is_floating_license=True, allow_overdraft=True, custom_machine_code="machine-c"
    )
    assert not Helpers.IsOnRightMachine(
        over[0], is_floating_license=True, allow_overdraft=False, custom_machine_code="machine-c"
    )
    assert _activate(server, "machine-d", max_overdraft=5) == (None, LIMIT_REACHED_MESSAGE)


def test_getkey_lists_live_machines_and_deactivate_frees_a_seat(server: Server) -> None:
    for code in ("machine-a", "machine-b"):
        assert _activate(server, code)[0] is not None
    license_key, message = Key.get_key(TOKEN, server.public_xml, PRODUCT, FLOATING_KEY)
    assert license_key is not None, message
    assert sorted(m.Mid for m in license_key.activated_machines) == [
        "floating:machine-a",
        "floating:machine-b",
    ]
    assert Key.deactivate(TOKEN, PRODUCT, FLOATING_KEY, "machine-a", floating=True) == (True, "")
    assert _activate(server, "machine-c")[0] is not None
    license_key, _ = Key.get_key(TOKEN, server.public_xml, PRODUCT, FLOATING_KEY)
    assert sorted(m.Mid for m in license_key.activated_machines) == [
        "floating:machine-b",
        "floating:machine-c",
    ]


def test_expired_lease_frees_its_seat(server: Server) -> None:
    for code in ("machine-a", "machine-b"):
        assert _activate(server, code, interval=60)[0] is not None
    assert _activate(server, "machine-c", interval=60)[1] == LIMIT_REACHED_MESSAGE
    server.clock.offset += 61
    assert _activate(server, "machine-c", interval=60)[0] is not None


def test_license_fields_reach_the_sdk(server: Server) -> None:
    license_key, message = _activate(server, "machine-a", friendly_name="alice")
    assert license_key is not None, message
    assert license_key.product_id == PRODUCT
    assert license_key.id == 41
    assert license_key.key == FLOATING_KEY
    assert (license_key.f1, license_key.f2, license_key.f3, license_key.f8) == (
        True,
        False,
        True,
        True,
    )
    assert license_key.notes == "floating test license"
    assert license_key.max_no_of_machines == 2
    assert license_key.customer["Name"] == "Ada"
    assert license_key.period == 31
    assert Helpers.HasNotExpired(license_key)
    assert [(d["Id"], d["Name"], d["IntValue"]) for d in license_key.data_objects] == [
        (7, "usage", 3),
        (8, "exports", 0),
    ]
    machine = license_key.activated_machines[0]
    assert machine.FriendlyName == "alice"
    assert machine.IP == "127.0.0.1"
    assert machine.FloatingExpires - machine.Time == 100
    assert abs(license_key.sign_date.timestamp() - time.time()) < 5


def test_friendly_name_none_means_empty(server: Server) -> None:
    license_key, _ = _activate(server, "machine-a")
    assert license_key.activated_machines[0].FriendlyName == ""


def test_saved_license_loads_only_with_the_server_key(server: Server) -> None:
    license_key, _ = _activate(server, "machine-a")
    saved = license_key.save_as_string()
    loaded = LicenseKey.load_from_string(server.public_xml, saved, 3)
    assert loaded is not None
    assert loaded.key == FLOATING_KEY
    other = public_key_to_xml(_make_key().public_key())
    assert LicenseKey.load_from_string(other, saved, 3) is None
    tampered = json.loads(saved)
    tampered["licenseKey"] = tampered["licenseKey"][:-8] + "AAAAAAA="
    assert LicenseKey.load_from_string(server.public_xml, json.dumps(tampered)) is None


def test_old_signature_is_rejected_by_the_sdk_age_check(server: Server) -> None:
    server.clock.offset = -5 * 86_400
    license_key, _ = _activate(server, "machine-a")
    saved = license_key.save_as_string()
    assert LicenseKey.load_from_string(server.public_xml, saved, 3) is None
    assert LicenseKey.load_from_string(server.public_xml, saved, 10) is not None


def test_activation_fails_signature_check_with_another_key(server: Server) -> None:
    other = public_key_to_xml(_make_key().public_key())
    result = Key.activate(TOKEN, other, PRODUCT, FLOATING_KEY, "m", floating_time_interval=100)
    assert result == (None, "The signature check failed.")


def test_metadata_is_signed_and_counts_used_seats(server: Server) -> None:
    assert _activate(server, "machine-b")[0] is not None
    result = _activate(server, "machine-a", metadata=True)
    assert len(result) == 3, result
    license_key, _, metadata = result
    assert license_key is not None
    assert metadata["UsedFloatingMachines"] == 2
    assert metadata["ActivatedMachines"] == 1
    assert metadata["LicenseStatus"]["IsValid"] is True
    assert metadata["LicenseStatus"]["TimeLimited"] is True
    other = public_key_to_xml(_make_key().public_key())
    bad = Key.activate(
        TOKEN, other, PRODUCT, FLOATING_KEY, "machine-a", metadata=True, floating_time_interval=1
    )
    assert bad == (None, "The signature check failed.")


def test_node_locked_allowed_machine_plus_the_first_max_machines_codes(server: Server) -> None:
    license_key, message = Key.activate(
        TOKEN, server.public_xml, PRODUCT, NODE_KEY, NODE_MACHINE, friendly_name="lab-pc"
    )
    assert license_key is not None, message
    assert [m.Mid for m in license_key.activated_machines] == [NODE_MACHINE]
    assert Helpers.IsOnRightMachine(license_key, custom_machine_code=NODE_MACHINE)
    assert not Helpers.IsOnRightMachine(license_key, custom_machine_code="someone-else")
    assert Helpers.HasFeature(license_key, "f1")
    # MaxNoOfMachines=1: the pre-listed machine uses no slot, so one other code activates.
    first, message = Key.activate(TOKEN, server.public_xml, PRODUCT, NODE_KEY, "someone-else")
    assert first is not None, message
    assert Helpers.IsOnRightMachine(first, custom_machine_code="someone-else")
    refused = Key.activate(TOKEN, server.public_xml, PRODUCT, NODE_KEY, "a-third-machine")
    assert refused == (None, LIMIT_REACHED_MESSAGE)
    again, message = Key.activate(TOKEN, server.public_xml, PRODUCT, NODE_KEY, "someone-else")
    assert again is not None, message


def test_unknown_key_is_refused(server: Server) -> None:
    license_key, message = Key.activate(TOKEN, server.public_xml, PRODUCT, "NOPE", "m")
    assert license_key is None
    assert message.startswith("Unable to find the license key.")


def test_increment_and_decrement_change_the_value_seen_later(server: Server) -> None:
    assert Data.increment_int_value_to_key(TOKEN, PRODUCT, FLOATING_KEY, 7, int_value=5)[1] == ""
    assert Data.decrement_int_value_to_key(TOKEN, PRODUCT, FLOATING_KEY, 7, int_value=2)[1] == ""
    by_name = Data.increment_int_value_to_key(
        TOKEN, PRODUCT, FLOATING_KEY, name="exports", int_value=4
    )
    assert by_name[1] == ""
    listed, message = Data.list_key_data_objects(TOKEN, PRODUCT, FLOATING_KEY)
    assert message == ""
    assert listed["dataObjects"] == [
        {"id": 7, "name": "usage", "stringValue": "", "intValue": 6},
        {"id": 8, "name": "exports", "stringValue": "csv", "intValue": 4},
    ]
    filtered, _ = Data.list_key_data_objects(TOKEN, PRODUCT, FLOATING_KEY, name_contains="sag")
    assert [d["id"] for d in filtered["dataObjects"]] == [7]
    license_key, _ = _activate(server, "machine-a")
    assert {d["Id"]: d["IntValue"] for d in license_key.data_objects} == {7: 6, 8: 4}
    license_key, _ = Key.get_key(TOKEN, server.public_xml, PRODUCT, FLOATING_KEY)
    assert {d["Id"]: d["IntValue"] for d in license_key.data_objects} == {7: 6, 8: 4}


def test_bound_is_enforced_and_a_refusal_changes_nothing(server: Server) -> None:
    up = Data.increment_int_value_to_key(
        TOKEN, PRODUCT, FLOATING_KEY, 7, int_value=8, enable_bound=True, bound=10
    )
    assert up[0] is None
    assert "would cross its bound" in up[1]
    ok = Data.increment_int_value_to_key(
        TOKEN, PRODUCT, FLOATING_KEY, 7, int_value=7, enable_bound=True, bound=10
    )
    assert ok[1] == ""
    down = Data.decrement_int_value_to_key(
        TOKEN, PRODUCT, FLOATING_KEY, 7, int_value=11, enable_bound=True, bound=0
    )
    assert down[0] is None
    listed, _ = Data.list_key_data_objects(TOKEN, PRODUCT, FLOATING_KEY, name_contains="usage")
    assert listed["dataObjects"][0]["intValue"] == 10


def test_unknown_data_object_and_unknown_license_are_refused(server: Server) -> None:
    missing = Data.increment_int_value_to_key(TOKEN, PRODUCT, FLOATING_KEY, 99, int_value=1)
    assert missing[0] is None
    assert "no data object with Id=99" in missing[1]
    nokey = Data.increment_int_value_to_key(TOKEN, PRODUCT, "NOPE", 7, int_value=1)
    assert nokey[0] is None
    assert nokey[1].startswith("Unable to find the license key.")


@pytest.mark.parametrize(
    "path",
    [
        "/api/key/activate",
        "/api//key/activate/",
        "/api/Key/Activate",
        "/api/key/activate/",
    ],
)
def test_dotnet_and_python_paths_reach_activate_without_redirect(server: Server, path: str) -> None:
    body = (
        f"token=x&v=1&ProductId={PRODUCT}&Key={FLOATING_KEY}&MachineCode=dotnet-1"
        "&FloatingTimeInterval=100&MaxOverdraft=0&FriendlyName=None&Sign=True"
        "&SignMethod=StringSign&modelversion=3&OSInfo=%7B%7D&metadata=False"
    ).encode()
    status, reply = server.post(path, body, "application/x-www-form-urlencoded")
    assert status == 200
    assert reply["result"] == 0, reply
    assert set(reply) == {"result", "message", "licenseKey", "signature"}


def test_sign_method_zero_is_refused_for_floating(server: Server) -> None:
    body = f"ProductId={PRODUCT}&Key={FLOATING_KEY}&MachineCode=m&FloatingTimeInterval=10"
    _, reply = server.post("/api/key/activate", body.encode())
    assert reply == {"result": 1, "message": SIGN_METHOD_FLOATING_MESSAGE}


_GOOD = f"ProductId={PRODUCT}&Key={FLOATING_KEY}".encode()


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        ("/api/key/nosuchmethod", _GOOD + b"&MachineCode=m&SignMethod=1", None),
        ("/api/key/activate", b"ProductId=abc&Key=K&MachineCode=m&SignMethod=1", None),
        ("/api/key/activate", _GOOD + b"&key=K2&MachineCode=m&SignMethod=1", None),
        ("/api/key/activate", b'{"ProductId": 3349}', "application/json"),
        ("/api/key/activate", _GOOD + b"&MachineCode=m&SignMethod=1", "multipart/form-data"),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&Id=7&IntValue=-3", None),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&Id=7&IntValue=1&Bound=x", None),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&Id=7&IntValue=1&EnableBound=yes", None),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&IntValue=1", None),
        (
            "/api//data/IncrementIntValueToKey/",
            _GOOD + b"&Id=7&IntValue=1&x=" + b"a" * 70_000,
            None,
        ),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&Id=7&IntValue=1&\xff=\xfe", None),
        ("/api//data/IncrementIntValueToKey/", _GOOD + b"&Id=7&IntValue=1&n=%FF", None),
    ],
)
def test_malformed_requests_get_result_1_and_change_nothing(
    server: Server, path: str, body: bytes, content_type: str | None
) -> None:
    status, reply = server.post(path, body, content_type)
    assert status == 200
    assert reply["result"] == 1
    assert isinstance(reply["message"], str)
    assert reply["message"]
    listed, _ = Data.list_key_data_objects(TOKEN, PRODUCT, FLOATING_KEY)
    assert [d["intValue"] for d in listed["dataObjects"]] == [3, 0]
