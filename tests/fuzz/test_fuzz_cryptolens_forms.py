"""Fuzz the Cryptolens-compatible API (``/api/...``) with generated form bodies.

SDKs need HTTP 200 JSON for every reply, so a refusal is ``{"result": 1, "message"}``.
Rules: no 5xx and no non-JSON reply, a non-empty message on every refusal, a time
bound per request, and nothing changed by a refused request: ledger head, balances,
leases and ``cryptolens.db``.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from support.fuzz import CASES, KEY, PRODUCT, Served, fuzz_settings, time_bound

METHODS = [
    "key/activate",
    "key/getkey",
    "key/deactivate",
    "data/incrementintvaluetokey",
    "data/decrementintvaluetokey",
    "data/listdataobjectstokey",
]
path_variants = st.sampled_from(METHODS).flatmap(
    lambda m: st.sampled_from([f"/api/{m}", f"/api//{m}/", f"/API/{m.upper()}", f"/api/{m}x"])
) | st.text(alphabet="/apikeydt.%", max_size=30).map(lambda p: "/api/" + p)

NAMES = [
    "token", "ProductId", "Key", "MachineCode", "FloatingTimeInterval", "MaxOverdraft",
    "FriendlyName", "Sign", "SignMethod", "Metadata", "Floating", "Id", "Name", "IntValue",
    "EnableBound", "Bound", "Contains", "v",
]  # fmt: skip
interesting = st.sampled_from(
    [str(PRODUCT), KEY, "NODE-1", "True", "false", "1", "0", "-1", "2147483648",
     "9" * 25, "None", "StringSign", "", " 7 ", "\x00", "é", "%ZZ", "+5"]
)  # fmt: skip
values = interesting | st.text(max_size=60) | st.integers(-(2**65), 2**65).map(str)
forms = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=8), values, max_size=10)


def _post(served: Served, path: str, body: bytes, content_type: str) -> dict[str, Any]:
    CASES["cryptolens"] += 1
    before = served.state()
    with time_bound(f"POST {path}"):
        response = served.client.post(path, content=body, headers={"Content-Type": content_type})
    if not response.request.url.path.lower().startswith("/api/"):
        # The client normalised '/api/..' away: the request never reached the API.
        return {"result": None}
    assert response.status_code == 200, f"{path}: HTTP {response.status_code}"
    reply: dict[str, Any] = response.json()
    assert reply["result"] in (0, 1), reply
    if reply["result"] == 1:
        assert str(reply.get("message", "")).strip(), f"{path}: refusal without a message"
        assert served.state() == before, f"{path}: refused ({reply['message']}) but state changed"
    return reply


@fuzz_settings(weight=2)
@given(path=path_variants, form=forms)
def test_generated_forms_answer_result_json_and_refusals_change_nothing(
    served: Served, path: str, form: dict[str, str]
) -> None:
    body = urllib.parse.urlencode(form).encode()
    _post(served, path, body, "application/x-www-form-urlencoded")


@fuzz_settings()
@given(
    path=path_variants,
    body=st.binary(max_size=2048),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "", "application/json", "text/plain; charset=x"]
    ),
)
def test_raw_bodies_answer_result_json(
    served: Served, path: str, body: bytes, content_type: str
) -> None:
    _post(served, path, body, content_type)


@fuzz_settings()
@given(n=st.integers(65, 400), size=st.sampled_from([0, 5000, 70_000]))
def test_too_many_or_too_long_fields_are_refused(served: Served, n: int, size: int) -> None:
    form = "&".join(f"f{i}=x" for i in range(n)) + ("&Key=" + "A" * size if size else "")
    reply = _post(served, "/api/key/getkey", form.encode(), "application/x-www-form-urlencoded")
    assert reply["result"] == 1


def test_a_valid_sdk_call_still_works_after_the_fuzzing(served: Served) -> None:
    body = urllib.parse.urlencode(
        {"token": "t", "ProductId": PRODUCT, "Key": KEY, "Sign": "True", "SignMethod": "1"}
    ).encode()
    reply = _post(served, "/api/key/getkey", body, "application/x-www-form-urlencoded")
    assert reply["result"] == 0, reply
