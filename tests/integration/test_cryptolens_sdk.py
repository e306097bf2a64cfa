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

from meterbox.compat import (
    LIMIT_REACHED_MESSAGE,
    SIGN_METHOD_FLOATING_MESSAGE,
    CryptolensLicenseView,
    CryptolensSigner,
    CustomerView,
    DataObject,
    create_cryptolens_app,
)
from meterbox.compat.memory import InMemoryBackend
from meterbox.compat.signer import public_key_to_xml

PRODUCT = 3349
FLOATING_KEY = "FLOAT-AAAA-BBBB-CCCC"
NODE_KEY = "NODE-AAAA-BBBB-CCCC"
TOKEN = "any-token-is-ignored"
NODE_MACHINE = "9f2c1e" * 10


class Clock:
    """Real time plus an offset the tests move forward to expire leases."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


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


def _licenses(now: int) -> list[tuple[CryptolensLicenseView, list[DataObject]]]:
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
    objects = [DataObject(7, "usage", "", 3), DataObject(8, "exports", "csv", 0)]
    return [(floating, objects), (node, [DataObject(1, "cryptolens_features", '["f1"]', 0)])]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    clock = Clock()
    signer = CryptolensSigner(_SIGNING_KEY)
    backend = InMemoryBackend(_licenses(int(clock())), clock)
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
    for code in ("machine-a", "machine-b"):
        assert Key.deactivate(TOKEN, PRODUCT, FLOATING_KEY, code, floating=True) == (True, "")
