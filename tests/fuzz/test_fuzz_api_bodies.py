"""Fuzz the JSON API (docs/api.md) with generated bodies, headers and paths.

The real app (engine, ledger, state store) serves the requests in-process. Every reply
to a bad request is a 4xx with the documented error body, and a refused request
changes nothing: the ledger head, balances, leases and installed licenses stay as
they were.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import FormatError
from meterbox.witness import parse_head
from support.fuzz import CASES, Served, fuzz_settings, time_bound

ENDPOINTS = ["/v1/seats/checkout", "/v1/seats/heartbeat", "/v1/seats/release", "/v1/usage"]
ADMIN = ["/v1/admin/import", "/v1/admin/export"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["feature", "client_id", "hostname", "lease_id", "meter", "amount", "idempotency_key"]
near_valid = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10), json_values | st.just("cad"), max_size=5
)


def _check_refusal(served: Served, response: Any, before: tuple[object, ...], what: str) -> None:
    assert response.status_code < 500, f"{what}: HTTP {response.status_code} {response.text[:300]}"
    if response.status_code == 200:
        return
    assert 400 <= response.status_code < 500, what
    body = response.json()
    error = body["error"]
    assert error["code"] and error["message"].strip(), what
    assert "Expected" in error["message"] or "Found" in error["message"], error["message"]
    assert set(body) == {"error"}
    # By design two refusals leave evidence in the ledger: no_seat counts a denial, and
    # renewing or releasing a lease the server does not hold seals a seat.unknown record
    # (the evidence of a restored data directory, docs/spec/ledger.md). Nothing else may
    # move on a refusal.
    if error["code"] not in ("no_seat", "lease_not_found"):
        assert served.state() == before, f"{what}: refused with {error['code']} but state changed"


def _post(served: Served, path: str, content: bytes, headers: dict[str, str] | None = None) -> Any:
    CASES["api"] += 1
    before = served.state()
    with time_bound(f"POST {path}"):
        response = served.client.post(path, content=content, headers=headers or {})
    _check_refusal(served, response, before, f"POST {path} {content[:80]!r}")
    return response


@fuzz_settings(weight=2)
@given(path=st.sampled_from(ENDPOINTS), body=near_valid)
def test_generated_json_bodies_are_refused_with_4xx_and_change_nothing(
    served: Served, path: str, body: dict[str, Any]
) -> None:
    _post(served, path, json.dumps(body).encode(), {"Content-Type": "application/json"})


@fuzz_settings()
@given(path=st.sampled_from(ENDPOINTS + ADMIN), body=st.binary(max_size=2048))
def test_generated_raw_bodies_are_refused_with_4xx(served: Served, path: str, body: bytes) -> None:
    # Without the token the admin endpoints must refuse before reading the body.
    response = _post(served, path, body, {"Content-Type": "application/json"})
    if path in ADMIN:
        assert response.status_code == 401


@fuzz_settings()
@given(body=st.binary(max_size=4096))
def test_admin_import_of_generated_bytes_changes_nothing(served: Served, body: bytes) -> None:
    response = _post(
        served,
        "/v1/admin/import",
        body,
        {"Authorization": f"Bearer {served.site.admin_token}"},
    )
    assert response.status_code != 200


@fuzz_settings()
@given(
    token=st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=80
    )
)
def test_generated_admin_tokens_are_refused(served: Served, token: str) -> None:
    if token == served.site.admin_token:
        return
    response = _post(served, "/v1/admin/export", b"", {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert served.site.admin_token not in response.text


@fuzz_settings()
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.sampled_from(ENDPOINTS + ADMIN + ["/v1/seats", "/v1/status"])
    | st.text(alphabet="/abcv1.%?#_-", max_size=40).map(lambda p: "/" + p),
)
def test_other_methods_and_paths_answer_4xx_json(served: Served, method: str, path: str) -> None:
    CASES["api"] += 1
    before = served.state()
    with time_bound(f"{method} {path}"):
        response = served.client.request(method, path)
    if path.lower().lstrip("/").startswith("api"):
        return  # the Cryptolens API: fuzzed in test_fuzz_cryptolens_forms.py
    assert response.status_code < 500
    sent = response.request.url.path
    ui = sent in {"/", "/login", "/logout"} or sent.startswith("/ui/")  # the HTML dashboard
    if response.status_code >= 400 and method != "HEAD" and not ui:
        assert "error" in response.json()
    assert served.state() == before or response.status_code == 200


def test_valid_requests_still_work_after_the_fuzzing(served: Served) -> None:
    # Guards against a fuzz run that passes because the app refuses everything.
    r = served.client.post("/v1/usage", json={"meter": "runs", "amount": 1, "client_id": "c"})
    assert r.status_code == 200, r.text
    r = served.client.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "c"})
    assert r.status_code == 200, r.text


_HEAD_PARTS = st.sampled_from(
    ["1", "2", "0", "01", "17", "-1", "", "00" * 16, "AB" * 16, "ab" * 32, "ab" * 31, " "]
)
witness_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300
) | st.lists(_HEAD_PARTS, max_size=6).map(":".join)


@fuzz_settings()
@given(path=st.sampled_from(ENDPOINTS), value=witness_values)
def test_generated_witness_headers_are_refused_before_anything_is_written(
    served: Served, path: str, value: str
) -> None:
    # A body that would be accepted, so only the header can be refused. Stripped, since
    # HTTP drops a value's outer blanks before the server sees it.
    body = {
        "/v1/usage": {"meter": "runs", "amount": 1, "client_id": "fz"},
        "/v1/seats/checkout": {"feature": "cad", "client_id": "fz"},
    }.get(path, {"lease_id": "fz-lease"})
    response = _post(
        served,
        path,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Meterbox-Witness": value},
    )
    try:
        parse_head(value.strip(" "))
    except FormatError:
        assert response.status_code == 400, response.text
        assert "Meterbox-Witness" in response.json()["error"]["message"]
