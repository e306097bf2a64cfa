"""The sans-I/O client core: configuration, request bodies, reply parsing, error mapping."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meterbox.client as client_pkg
from meterbox.client import _core as core
from meterbox.client.errors import (
    BadRequestError,
    ConfigError,
    IdempotencyConflictError,
    LeaseLost,
    LicenseExpired,
    NoSeatAvailable,
    ProtocolError,
    QuotaExceeded,
    ReportOverdue,
    ServerUnreachableError,
    UnknownMeter,
)
from meterbox.errors import MeterboxError

URL = "http://127.0.0.1:8400"


def reply(status: int, body: object) -> core.Reply:
    return core.Reply(URL, status, body)


def err(code: str, message: str = "msg") -> dict[str, object]:
    return {"error": {"code": code, "message": message}}


# -- configuration


def test_explicit_url_wins_over_environment() -> None:
    urls = core.resolve_urls("http://a:1/", {"METERBOX_URL": "http://b:2"})
    assert urls == ("http://a:1",)


def test_environment_url_list_gives_failover_order() -> None:
    urls = core.resolve_urls(None, {"METERBOX_URL": "http://a:1, http://b:2"})
    assert urls == ("http://a:1", "http://b:2")


def test_missing_url_says_how_to_configure_it() -> None:
    with pytest.raises(ConfigError, match="METERBOX_URL"):
        core.resolve_urls(None, {})


def test_url_without_scheme_is_refused() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        core.resolve_urls("127.0.0.1:8400", {})


def test_spool_path_from_environment_then_xdg_then_home(tmp_path: Path) -> None:
    assert core.default_spool_path({"METERBOX_SPOOL": "/x/s.db"}, tmp_path) == Path("/x/s.db")
    assert core.default_spool_path({"XDG_DATA_HOME": "/d"}, tmp_path) == Path(
        "/d/meterbox/spool.db"
    )
    assert core.default_spool_path({}, tmp_path) == tmp_path / ".local/share/meterbox/spool.db"


def test_failover_tries_the_lease_server_first() -> None:
    assert core.failover_order(["a", "b", "c"], "b") == ["b", "a", "c"]
    assert core.failover_order(["a", "b"], None) == ["a", "b"]
    assert core.failover_order(["a", "b"], "z") == ["a", "b"]


def test_failover_only_on_no_answer_or_503() -> None:
    assert core.fails_over(core.Unreachable(URL, "refused"))
    assert core.fails_over(reply(503, err("unavailable")))
    assert not core.fails_over(reply(409, err("no_seat")))
    assert not core.fails_over(reply(500, None))


def test_bad_renewal_fraction_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fraction"):
        core.ClientConfig.build(
            URL,
            spool=None,
            client_id=None,
            hostname=None,
            timeout=1.0,
            retry=None,
            renew_fraction=1.5,
            flush_interval=None,
            environ={},
            home=tmp_path,
        )


def test_public_names_match_all() -> None:
    public = {n for n in dir(client_pkg) if not n.startswith("_")} - {
        "annotations",
        "cli",
        "errors",
    }
    assert public == set(client_pkg.__all__)


# -- requests


def test_usage_body_has_exactly_the_documented_fields() -> None:
    req = core.usage_request(core.UsageEvent("runs", 3, "h/pid-1", "k1"))
    assert (req.method, req.path) == ("POST", "/v1/usage")
    assert req.body == {
        "meter": "runs",
        "amount": 3,
        "client_id": "h/pid-1",
        "idempotency_key": "k1",
    }


def test_checkout_body_omits_hostname_unless_given() -> None:
    assert core.checkout_request("cad", "c", None).body == {"feature": "cad", "client_id": "c"}
    assert core.checkout_request("cad", "c", "h").body == {
        "feature": "cad",
        "client_id": "c",
        "hostname": "h",
    }


@pytest.mark.parametrize("amount", [0, -1, True, 1.5, "3"])
def test_non_positive_or_non_integer_amount_is_refused_locally(amount: object) -> None:
    with pytest.raises(BadRequestError, match="positive integer"):
        core.UsageEvent("runs", amount, "c", "k")  # type: ignore[arg-type]


def test_overlong_idempotency_key_is_refused_locally() -> None:
    with pytest.raises(BadRequestError, match="128"):
        core.UsageEvent("runs", 1, "c", "k" * 129)


# -- parsing


LEASE = {
    "lease_id": "L1",
    "feature": "cad",
    "client_id": "c",
    "expires_at": "2026-01-01T00:01:00Z",
    "lease_seconds": 60,
    "overdraft": False,
    "renewed": False,
}


def test_lease_parses_with_utc_expiry() -> None:
    lease = core.parse_lease(reply(200, LEASE))
    assert lease.expires_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert lease.lease_seconds == 60.0


def test_lease_missing_field_is_a_protocol_error_naming_it() -> None:
    body = dict(LEASE)
    del body["lease_id"]
    with pytest.raises(ProtocolError, match="lease_id"):
        core.parse_lease(reply(200, body))


def test_html_from_a_proxy_is_a_protocol_error() -> None:
    assert core.decode_body(b"<html>bad gateway</html>") is None
    with pytest.raises(ProtocolError, match="not a JSON object"):
        core.parse_lease(reply(200, None))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150)
@given(body=json_values, status=st.sampled_from([200, 400, 402, 403, 404, 409, 500, 503]))
def test_any_json_reply_is_classified_or_a_protocol_error(body: object, status: int) -> None:
    outcome = reply(status, body)
    decision = core.classify_delivery(outcome)
    assert isinstance(decision, core.Delivered | core.Transient | core.Rejected)
    assert isinstance(core.classify_renewal(outcome), core.Renewed | core.RenewLater | core.Lost)
    for parser in (core.parse_lease, core.parse_receipt, core.parse_balances):
        with contextlib.suppress(ProtocolError):
            parser(outcome)


@settings(max_examples=100)
@given(
    used=st.integers(0, 2**40),
    limit=st.none() | st.integers(0, 2**40),
    seq=st.integers(0, 2**40),
    amount=st.integers(1, 2**31),
    replayed=st.booleans(),
)
def test_receipt_fields_round_trip(
    used: int, limit: int | None, seq: int, amount: int, replayed: bool
) -> None:
    remaining = None if limit is None else limit - used
    body = {
        "meter": "m",
        "amount": amount,
        "seq": seq,
        "used": used,
        "limit": limit,
        "remaining": remaining,
        "flagged": False,
        "replayed": replayed,
    }
    decision = core.classify_delivery(reply(200, body))
    assert isinstance(decision, core.Delivered)
    assert decision.receipt == core.UsageReceipt(
        "m", amount, seq, used, limit, remaining, False, replayed
    )


# -- errors


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (409, "no_seat", NoSeatAvailable),
        (402, "quota_exceeded", QuotaExceeded),
        (403, "report_overdue", ReportOverdue),
        (403, "license_expired", LicenseExpired),
        (404, "unknown_meter", UnknownMeter),
        (404, "lease_not_found", LeaseLost),
        (409, "idempotency_conflict", IdempotencyConflictError),
        (400, "bad_request", BadRequestError),
        (413, "too_large", BadRequestError),
        (503, "unavailable", ServerUnreachableError),
        (418, "teapot", BadRequestError),
    ],
)
def test_error_codes_map_to_exception_classes(status: int, code: str, cls: type) -> None:
    exc = core.error_from_reply(reply(status, err(code, "Server says why")))
    assert type(exc) is cls
    assert "Server says why" in str(exc)


def test_unknown_5xx_is_a_protocol_error_with_the_status() -> None:
    exc = core.error_from_reply(reply(502, None))
    assert isinstance(exc, ProtocolError)
    assert "502" in str(exc)


def test_delivery_outcomes() -> None:
    assert isinstance(core.classify_delivery(core.Unreachable(URL, "x")), core.Transient)
    assert isinstance(core.classify_delivery(reply(503, err("unavailable"))), core.Transient)
    assert isinstance(core.classify_delivery(reply(500, None)), core.Transient)
    # A 200 we cannot read may still be durable server-side: resend under the same key.
    assert isinstance(core.classify_delivery(reply(200, {"x": 1})), core.Transient)
    rejected = core.classify_delivery(reply(402, err("quota_exceeded")))
    assert isinstance(rejected, core.Rejected)
    assert isinstance(rejected.error, QuotaExceeded)


def test_lost_lease_error_says_what_to_do() -> None:
    step = core.classify_renewal(reply(404, err("lease_not_found", "no lease L1")))
    assert isinstance(step, core.Lost)
    assert isinstance(step.error, LeaseLost)
    assert "Check out the seat again" in str(step.error)


def test_expect_ok_raises_unreachable_listing_servers() -> None:
    with pytest.raises(ServerUnreachableError, match="http://a:1"):
        core.expect_ok(core.Unreachable("http://a:1", "refused"), ["http://a:1"])


def test_every_client_error_is_a_meterbox_error() -> None:
    for name in client_pkg.__all__:
        obj = getattr(client_pkg, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, MeterboxError)


# -- backoff


@settings(max_examples=200)
@given(attempts=st.integers(1, 10_000), r=st.floats(0, 1, exclude_max=True))
def test_backoff_is_jittered_and_capped(attempts: int, r: float) -> None:
    policy = core.RetryConfig(base_seconds=0.5, cap_seconds=60.0)
    d = policy.delay(attempts, r)
    step = min(60.0, 0.5 * 2 ** min(attempts - 1, 100))
    assert step / 2 <= d <= step


def test_backoff_grows_exponentially_until_the_cap() -> None:
    policy = core.RetryConfig(base_seconds=1.0, cap_seconds=8.0)
    assert [policy.delay(n, 0.0) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_renewal_runs_at_a_third_of_the_lease() -> None:
    assert core.renewal_interval(60.0, 1 / 3) == pytest.approx(20.0)
    assert core.retry_interval(60.0, 1 / 3) == pytest.approx(5.0)


# -- balances and identity


def balance_entry(**overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "meter": "runs", "license_id": "lic-1", "limit": 10, "period": "month",
        "period_start": "2026-01-01T00:00:00Z", "used": 3, "remaining": 7,
        "over_limit": "refuse",
    }  # fmt: skip
    entry.update(overrides)
    return entry


def test_refusing_meter_under_its_limit_is_not_over_it() -> None:
    (b,) = core.parse_balances(reply(200, {"meters": [balance_entry()]}))
    assert (b.policy, b.over_limit, b.license_id) == ("refuse", False, "lic-1")


def test_allowing_meter_past_its_limit_is_over_it() -> None:
    entry = balance_entry(over_limit="allow", used=12, remaining=0)
    (b,) = core.parse_balances(reply(200, {"meters": [entry]}))
    assert (b.policy, b.over_limit) == ("allow", True)


def test_meter_exactly_at_its_limit_is_not_over_it() -> None:
    (b,) = core.parse_balances(reply(200, {"meters": [balance_entry(used=10, remaining=0)]}))
    assert b.over_limit is False


def test_unlimited_meter_is_never_over_a_limit() -> None:
    entry = balance_entry(limit=None, remaining=None, used=10**9, over_limit="allow")
    (b,) = core.parse_balances(reply(200, {"meters": [entry]}))
    assert b.over_limit is False


def test_unknown_over_limit_policy_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="over-limit policy"):
        core.parse_balances(reply(200, {"meters": [balance_entry(over_limit=True)]}))


def test_default_client_id_is_host_and_user_not_process() -> None:
    assert core.default_client_id("ws-1", "ana") == "ws-1/ana"
    assert "pid" not in core.default_client_id()
    assert core.default_client_id() == core.default_client_id()


def test_unreachable_checkout_does_not_claim_usage_was_spooled() -> None:
    error = core.unreachable_error(core.Unreachable(URL, "refused"), [URL])
    assert "spool" not in error.render()
    assert "not delivered" in error.render()
