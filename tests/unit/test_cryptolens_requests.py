"""Request layer of the Cryptolens-compatible API: paths, form parsing, replies.

Runs the Starlette app in-process (httpx ASGI transport) over the in-memory
test backend; the real-SDK scenarios live in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from meterbox.clock import ManualClock
from meterbox.compat import (
    CryptolensLicenseView,
    CryptolensLimitsConfig,
    CryptolensRequestError,
    CryptolensService,
    CryptolensSigner,
    DataObjectView,
    create_cryptolens_app,
    with_cryptolens_api,
)
from meterbox.compat.memory import InMemoryBackend
from meterbox.compat.wire import normalise_method, parse_form

NOW = 1_750_000_000
CLOCK = ManualClock(wall_ms=NOW * 1000)
SIGNER = CryptolensSigner(rsa.generate_private_key(public_exponent=65537, key_size=2048))
VIEW = CryptolensLicenseView(
    license_id="lic-1",
    product_id=3349,
    key="KEY-1",
    id=5,
    created=NOW - 86_400,
    max_no_of_machines=1,
    max_overdraft=0,
    floating=True,
)
GOOD = "ProductId=3349&Key=KEY-1&MachineCode=m1&FloatingTimeInterval=100&SignMethod=1"


def _backend() -> InMemoryBackend:
    return InMemoryBackend([(VIEW, [DataObjectView(7, "usage", "", 3)])], CLOCK)


def _service() -> CryptolensService:
    return CryptolensService(_backend(), SIGNER, CLOCK)


async def _post(app, path: str, body: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("10.0.0.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # httpx would read "//key" as an authority, so the raw path goes in the request target.
        request = client.build_request(
            "POST",
            "http://test/",
            content=body.encode(),
            headers={"content-type": "application/x-www-form-urlencoded", **(headers or {})},
        )
        request.url = request.url.copy_with(raw_path=path.encode())
        return await client.send(request, follow_redirects=False)


def _mounted():
    compat = create_cryptolens_app(_backend(), SIGNER, CLOCK)
    return Starlette(routes=[Mount("/api", compat)])


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/key/activate", "key/activate"),
        ("/api//key/activate/", "key/activate"),
        ("//data/IncrementIntValueToKey/", "data/incrementintvaluetokey"),
        ("/API/Data/ListDataObjectsToKey", "data/listdataobjectstokey"),
        ("key/GetKey", "key/getkey"),
        ("/api/key/deactivate///", "key/deactivate"),
    ],
)
def test_paths_are_normalised(path: str, method: str) -> None:
    assert normalise_method(path) == method


@pytest.mark.parametrize(
    "path", ["/api/key", "/api/key/activate/extra", "/", "/api/../key/activate"]
)
def test_unknown_paths_are_refused(path: str) -> None:
    with pytest.raises(CryptolensRequestError, match="unknown method"):
        normalise_method(path)


@pytest.mark.parametrize(
    "path",
    [
        "/api/key/activate",
        "/api//key/activate/",
        "/api/KEY/ACTIVATE",
        "/api//data/IncrementIntValueToKey/",
    ],
)
def test_mounted_app_answers_every_sdk_path_without_redirect(path: str) -> None:
    body = GOOD if "activate" in path.lower() else "ProductId=3349&Key=KEY-1&Id=7&IntValue=1"
    response = asyncio.run(_post(_mounted(), path, body))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json()["result"] == 0, response.json()


def test_wrapper_routes_api_in_any_case_and_leaves_other_paths_alone() -> None:
    async def other(request):
        return PlainTextResponse("other")

    outer = Starlette(routes=[Route("/healthz", other, methods=["POST"])])
    wrapped = with_cryptolens_api(outer, create_cryptolens_app(_backend(), SIGNER, CLOCK))
    reply = asyncio.run(_post(wrapped, "/API//key/activate/", GOOD))
    assert reply.json()["result"] == 0
    assert asyncio.run(_post(wrapped, "/healthz", "")).text == "other"


def test_get_is_answered_with_result_1() -> None:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=_mounted())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.get("/api/key/activate")

    response = asyncio.run(run())
    assert response.status_code == 200
    assert response.json()["result"] == 1
    assert "Expected POST" in response.json()["message"]


def test_oversized_content_length_is_refused_before_reading() -> None:
    app = create_cryptolens_app(
        _backend(), SIGNER, CLOCK, CryptolensLimitsConfig(max_body_bytes=100)
    )
    response = asyncio.run(_post(app, "/key/activate", GOOD + "&x=" + "a" * 200))
    assert response.json()["result"] == 1
    assert "too large" in response.json()["message"]


def test_parameter_names_are_case_insensitive() -> None:
    form = parse_form(
        b"productid=1&KEY=k&FriendlyName=None&metaData=True&floating=1", CryptolensLimitsConfig()
    )
    assert form.integer("ProductId") == 1
    assert form.text("Key", max_chars=10) == "k"
    assert form.friendly_name() == ""
    assert form.boolean("metadata") is True
    assert form.boolean("Floating") is True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)],
)
def test_booleans_in_every_sdk_spelling(raw: str, expected: bool) -> None:
    assert (
        parse_form(f"EnableBound={raw}".encode(), CryptolensLimitsConfig()).boolean("EnableBound")
        is expected
    )


@pytest.mark.parametrize("raw", ["yes", "2", "Truee", "on"])
def test_other_booleans_are_refused(raw: str) -> None:
    with pytest.raises(CryptolensRequestError, match="not a boolean"):
        parse_form(f"EnableBound={raw}".encode(), CryptolensLimitsConfig()).boolean("EnableBound")


@pytest.mark.parametrize(
    "body",
    [
        b"a=1&A=2",
        b"x=" + b"y" * 5000,
        b"%FF=1",
        b"\xff=1",
        b"&".join([b"f%d=1" % i for i in range(70)]),
    ],
)
def test_bad_forms_are_refused(body: bytes) -> None:
    with pytest.raises(CryptolensRequestError):
        parse_form(body, CryptolensLimitsConfig())


def test_sign_method_spellings() -> None:
    assert parse_form(b"SignMethod=StringSign", CryptolensLimitsConfig()).sign_method() == 1
    assert parse_form(b"signmethod=1", CryptolensLimitsConfig()).sign_method() == 1
    assert parse_form(b"", CryptolensLimitsConfig()).sign_method() == 0


def test_activation_reply_has_camel_case_keys_and_integer_result() -> None:
    reply = asyncio.run(_service().handle("POST", "/key/activate", GOOD.encode(), "", "1.2.3.4"))
    assert set(reply) == {"result", "message", "licenseKey", "signature"}
    assert reply["result"] == 0
    assert reply["message"] == ""


def test_refusal_changes_nothing_in_the_backend() -> None:
    service = _service()
    body = b"ProductId=3349&Key=KEY-1&Id=7&IntValue=5&EnableBound=True&Bound=4"
    reply = asyncio.run(service.handle("POST", "/data/IncrementIntValueToKey", body, "", ""))
    assert reply["result"] == 1
    listed = asyncio.run(
        service.handle("POST", "/data/ListDataObjectsToKey", b"ProductId=3349&Key=KEY-1", "", "")
    )
    assert listed["dataObjects"][0]["intValue"] == 3


_NAMES = st.sampled_from(
    [
        "ProductId", "productid", "Key", "key", "MachineCode", "FloatingTimeInterval",
        "MaxOverdraft", "FriendlyName", "metadata", "Sign", "SignMethod", "Id", "Name",
        "IntValue", "EnableBound", "Bound", "Contains", "Floating", "token", "v",
    ]
)  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(["3349", "KEY-1", "True", "False", "1", "0", "-1", "None", "StringSign", ""]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.text(max_size=40),
)
_PATHS = st.sampled_from(
    [
        "/key/activate",
        "/api//key/activate/",
        "/key/getkey",
        "/key/deactivate",
        "//data/IncrementIntValueToKey/",
        "/data/DecrementIntValueToKey",
        "/data/ListDataObjectsToKey",
        "/nope",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=_PATHS,
    fields=st.lists(st.tuples(_NAMES, _VALUES), max_size=12),
    raw_tail=st.binary(max_size=30),
)
def test_random_form_bodies_never_crash_and_always_answer_result_0_or_1(
    path: str, fields: list[tuple[str, str]], raw_tail: bytes
) -> None:
    body = urllib.parse.urlencode(fields).encode() + raw_tail
    reply = asyncio.run(_service().handle("POST", path, body, "", "127.0.0.1"))
    assert reply["result"] in (0, 1)
    assert isinstance(reply["message"], str)
    json.dumps(reply)
    if reply["result"] == 1:
        assert set(reply) == {"result", "message"}
