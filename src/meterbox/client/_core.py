"""Sans-I/O core of the client: requests out, outcomes in, values or errors back.

Nothing here opens a socket, a file or a thread, reads a clock or draws a random
number on its own: callers pass ``now`` and ``rand``. The sync and async clients
are thin drivers around these functions, so both speak docs/api.md identically.

Invariants:

- every request body is built here and only here, and carries exactly the fields
  docs/api.md names (the server refuses unknown fields);
- every server answer is classified by :func:`classify_delivery` /
  :func:`error_from_reply` into *delivered*, *transient* (retry later, spool) or
  *rejected* (raise or dead-letter); a reply that fits none of these is a
  :class:`ProtocolError`, never silently accepted;
- a 503 or a transport failure is transient; any other 4xx is permanent.
"""

from __future__ import annotations

import getpass
import json
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from meterbox.client.errors import (
    BadRequestError,
    BorrowRefused,
    ConfigError,
    ForbiddenError,
    IdempotencyConflictError,
    LeaseLost,
    LicenseExpired,
    LicenseRevoked,
    LicenseSuspended,
    MeterboxError,
    NoSeatAvailable,
    PolicyDenied,
    ProtocolError,
    QuotaExceeded,
    ReportOverdue,
    ServerUnreachableError,
    UnauthorizedError,
    UnknownFeature,
    UnknownMeter,
)

#: Longest a checkout may wait in the server's queue (docs/api.md, wait_seconds).
MAX_WAIT_SECONDS = 3600
#: Longest idempotency key the server accepts (docs/api.md, POST /v1/usage).
MAX_IDEMPOTENCY_KEY = 128
#: Environment variable naming the server URL(s), comma-separated for failover.
ENV_URL = "METERBOX_URL"
#: Environment variable naming the spool file.
ENV_SPOOL = "METERBOX_SPOOL"
#: The site API key, when none is passed as ``api_key=`` (or ``--api-key``).
API_KEY_ENV = "METERBOX_API_KEY"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Request:
    """One HTTP request, independent of any transport."""

    method: Literal["GET", "POST"]
    path: str
    body: Mapping[str, object] | None = None
    #: Seconds the server may hold the request (a queued checkout), on top of the timeout.
    wait: float = 0.0


@dataclass(frozen=True)
class Reply:
    """The server answered. ``body`` is the decoded JSON, or None if it was not JSON."""

    url: str
    status: int
    body: object


@dataclass(frozen=True)
class Unreachable:
    """No answer: connection refused, reset, DNS failure or timeout."""

    url: str
    reason: str


Outcome = Reply | Unreachable


@dataclass(frozen=True)
class Lease:
    """A seat lease as the server granted it (docs/api.md, POST /v1/seats/checkout)."""

    lease_id: str
    feature: str
    client_id: str
    expires_at: datetime
    lease_seconds: float
    overdraft: bool
    renewed: bool


@dataclass(frozen=True)
class UsageEvent:
    """One usage event. The idempotency key is fixed at creation and never changes."""

    meter: str
    amount: int
    client_id: str
    idempotency_key: str

    def __post_init__(self) -> None:
        validate_usage(self.meter, self.amount, self.idempotency_key)


@dataclass(frozen=True)
class UsageReceipt:
    """The server's answer to POST /v1/usage, sent once the record is durable."""

    meter: str
    amount: int
    seq: int
    used: int
    limit: int | None
    remaining: int | None
    flagged: bool
    replayed: bool


@dataclass(frozen=True)
class RecordResult:
    """What :meth:`Client.record` did with one event.

    ``spooled`` is True when the server could not be reached and the event waits in
    the local spool; ``receipt`` is then None. Otherwise the server applied it.
    """

    idempotency_key: str
    spooled: bool
    receipt: UsageReceipt | None


@dataclass(frozen=True)
class DeadLetter:
    """A spooled event the server refused for good, kept with the reason."""

    id: int
    event: UsageEvent
    reason: str
    code: str
    failed_at: float


@dataclass(frozen=True)
class FlushResult:
    """Counts from one pass over the spool.

    ``pending`` is what is still waiting; ``dead_letters`` lists the events moved to
    the dead-letter table during this pass; ``stopped`` says why the pass ended
    early (None when the spool was drained).
    """

    delivered: int
    pending: int
    dead_letters: tuple[DeadLetter, ...]
    stopped: str | None

    @property
    def dead_lettered(self) -> int:
        return len(self.dead_letters)


@dataclass(frozen=True)
class Balance:
    """One meter's balance (docs/api.md, GET /v1/usage/balances).

    ``policy`` is what the license does past the limit (``"refuse"`` or ``"allow"``, the
    wire field ``over_limit``); ``over_limit`` says whether usage is past the limit now,
    which only an ``"allow"`` meter can be.
    """

    meter: str
    limit: int | None
    period: str | None
    period_start: str | None
    used: int
    remaining: int | None
    over_limit: bool
    policy: str = "refuse"
    license_id: str | None = None


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff with jitter for spooled events.

    ``max_attempts`` bounds transient failures per event; past it the event goes to
    the dead-letter table (reason ``retry budget exhausted``) instead of blocking the
    spool forever. None means never give up. The default of 1000 attempts with a
    60 s cap is roughly 8 hours of continuous outage. ``max_age_seconds`` bounds how
    long an event may wait at all (see docs/adr/0005-client-spool.md).
    """

    base_seconds: float = 0.5
    cap_seconds: float = 60.0
    max_attempts: int | None = 1000
    #: Events older than this are dead-lettered instead of sent: the server forgets
    #: idempotency keys after 7 days, so a resend past that could count a unit twice.
    max_age_seconds: float | None = 6 * 24 * 3600.0

    def __post_init__(self) -> None:
        if not (self.base_seconds > 0 and self.cap_seconds >= self.base_seconds):
            raise ConfigError(
                "Retry policy is not usable",
                expected="0 < base_seconds <= cap_seconds",
                found=f"base_seconds={self.base_seconds}, cap_seconds={self.cap_seconds}",
                hint="Pass positive delays with the cap at least the base",
            )
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(
                "Retry policy is not usable",
                expected="max_attempts >= 1 or None",
                found=f"max_attempts={self.max_attempts}",
                hint="Use None to retry forever",
            )

    def delay(self, attempts: int, rand: float) -> float:
        """Seconds to wait after the ``attempts``-th failure; ``rand`` is uniform in [0, 1).

        Equal jitter: half the exponential step is fixed, half random, so a crowd of
        clients spreads out but no client retries immediately.
        """
        # The exponent is clamped so a long outage (thousands of attempts) cannot
        # overflow a float before the cap applies.
        exponent = min(max(0, attempts - 1), 64)
        step = min(self.cap_seconds, self.base_seconds * math.pow(2.0, exponent))
        return step / 2.0 + rand * step / 2.0


# ----------------------------------------------------------------- configuration


def resolve_urls(url: str | Sequence[str] | None, environ: Mapping[str, str]) -> tuple[str, ...]:
    """The servers to try, in order: the explicit argument, else ``METERBOX_URL``.

    A string may hold several URLs separated by commas.
    """
    raw: list[str]
    if url is None:
        env = environ.get(ENV_URL, "")
        raw = env.split(",")
        source = f"${ENV_URL}={env!r}"
    elif isinstance(url, str):
        raw = url.split(",")
        source = repr(url)
    else:
        raw = list(url)
        source = repr(list(url))
    urls = tuple(u.strip().rstrip("/") for u in raw if u.strip())
    if not urls:
        raise ConfigError(
            "No meterbox server URL is configured",
            expected=f"a URL such as http://127.0.0.1:8400 passed as url= or set in ${ENV_URL}",
            found=source,
            hint=f"Pass url=... or export {ENV_URL}",
        )
    for u in urls:
        if not (u.startswith(("http://", "https://")) and len(u) > len("https://")):
            raise ConfigError(
                "Server URL is not an HTTP URL",
                expected="http://host:port or https://host:port",
                found=repr(u),
                hint="Include the scheme, e.g. http://127.0.0.1:8400",
            )
    return urls


def default_spool_path(environ: Mapping[str, str], home: Path) -> Path:
    """``$METERBOX_SPOOL``, else ``$XDG_DATA_HOME/meterbox/spool.db``, else under ``home``."""
    explicit = environ.get(ENV_SPOOL)
    if explicit:
        return Path(explicit)
    data_home = environ.get("XDG_DATA_HOME")
    base = Path(data_home) if data_home else home / ".local" / "share"
    return base / "meterbox" / "spool.db"


def default_client_id(hostname: str | None = None, user: str | None = None) -> str:
    """``host/user``: the same for every process of one user on one host.

    Stable across processes on purpose: a shell script's rerun of ``meterbox client
    record --key K`` must present the same identity to be recognised as a replay, and a
    second ``meterbox client checkout`` of a held feature must renew the user's seat
    instead of taking another (docs/adr/0018-cli-config-and-packaging.md).
    """
    host = hostname if hostname is not None else socket.gethostname()
    return f"{host}/{user if user is not None else _login_name()}"


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # No passwd entry and no LOGNAME/USER (e.g. an anonymous container uid).
        return f"uid-{os.getuid()}"


def failover_order(urls: Sequence[str], prefer: str | None) -> list[str]:
    """Servers in configured order, with ``prefer`` (the lease's server) tried first."""
    if prefer is not None and prefer in urls:
        return [prefer, *[u for u in urls if u != prefer]]
    return list(urls)


def fails_over(outcome: Outcome) -> bool:
    """Whether to try the next server: no answer, or 503 (ledger cannot accept records)."""
    return isinstance(outcome, Unreachable) or outcome.status == 503


# ----------------------------------------------------------------- requests


def validate_usage(meter: str, amount: int, idempotency_key: str | None) -> None:
    """Refuse locally what the server would refuse with 400, before it reaches the spool."""
    if not isinstance(meter, str) or not meter:
        raise BadRequestError(
            "Meter name is not usable",
            expected="a non-empty string",
            found=repr(meter),
            hint="Pass the meter name from the license, e.g. 'solver-runs'",
        )
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise BadRequestError(
            "Usage amount is not usable",
            expected="a positive integer",
            found=repr(amount),
            hint="Record whole units; scale fractional quantities to an integer unit",
        )
    if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY):
        raise BadRequestError(
            "Idempotency key is not usable",
            expected=f"1 to {MAX_IDEMPOTENCY_KEY} characters",
            found=f"{len(idempotency_key)} characters",
            hint="Omit the key to have one generated",
        )


def checkout_request(
    feature: str,
    client_id: str,
    hostname: str | None,
    user: str | None = None,
    wait: float | None = None,
) -> Request:
    if not feature:
        raise BadRequestError(
            "Feature name is empty",
            expected="a feature name from the license, e.g. 'cad'",
            found="''",
            hint="Pass the feature to check out",
        )
    body: dict[str, object] = {"feature": feature, "client_id": client_id}
    if hostname is not None:
        body["hostname"] = hostname
    if user is not None:
        body["user"] = user
    if wait:
        if not 0 < wait <= MAX_WAIT_SECONDS:
            raise BadRequestError(
                "The checkout's wait is not usable",
                expected=f"0 < wait <= {MAX_WAIT_SECONDS} seconds",
                found=repr(wait),
                hint="Pass wait=None to be refused at once when no seat is free",
            )
        body["wait_seconds"] = math.ceil(wait)
        return Request("POST", "/v1/seats/checkout", body, wait=float(math.ceil(wait)))
    return Request("POST", "/v1/seats/checkout", body)


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The headers every request of a client carries: its site API key, if it has one."""
    return {} if api_key is None else {"Authorization": f"Bearer {api_key}"}


def heartbeat_request(lease_id: str) -> Request:
    return Request("POST", "/v1/seats/heartbeat", {"lease_id": lease_id})


def release_request(lease_id: str) -> Request:
    return Request("POST", "/v1/seats/release", {"lease_id": lease_id})


def usage_request(event: UsageEvent) -> Request:
    return Request(
        "POST",
        "/v1/usage",
        {
            "meter": event.meter,
            "amount": event.amount,
            "client_id": event.client_id,
            "idempotency_key": event.idempotency_key,
        },
    )


def balances_request() -> Request:
    return Request("GET", "/v1/usage/balances")


def decode_body(content: bytes) -> object:
    """The JSON body, or None when the body is empty or not JSON (a proxy's HTML page)."""
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


# ----------------------------------------------------------------- parsing


def _field(
    obj: Mapping[str, object], name: str, kind: type | tuple[type, ...], what: str
) -> object:
    value = obj.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(
            f"Server answer to {what} has a bad {name!r} field",
            expected=f"{name!r} of type {getattr(kind, '__name__', kind)}",
            found=repr(value),
            hint="Check that the server speaks meterbox API v1 (docs/api.md)",
        )
    return value


def _int(obj: Mapping[str, object], name: str, what: str) -> int:
    value = _field(obj, name, int, what)
    assert isinstance(value, int)
    return value


def _opt_int(obj: Mapping[str, object], name: str, what: str) -> int | None:
    if obj.get(name) is None:
        return None
    return _int(obj, name, what)


def _object(reply: Reply, what: str) -> Mapping[str, object]:
    if not isinstance(reply.body, dict):
        raise ProtocolError(
            f"Server answer to {what} is not a JSON object",
            expected="a JSON object as in docs/api.md",
            found=f"HTTP {reply.status} with body {str(reply.body)[:80]!r}",
            hint=f"Check that {reply.url} is a meterbox server, not a proxy or another service",
        )
    return reply.body


def parse_timestamp(value: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(
            "Server sent a timestamp that does not parse",
            expected="ISO-8601 UTC, e.g. 2026-01-01T00:00:00Z",
            found=repr(value),
            hint="Check that the server speaks meterbox API v1",
        ) from None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def parse_lease(reply: Reply) -> Lease:
    what = "a seat request"
    obj = _object(reply, what)
    seconds = _field(obj, "lease_seconds", (int, float), what)
    assert isinstance(seconds, int | float)
    if seconds <= 0:
        raise ProtocolError(
            "Server granted a lease with no duration",
            expected="lease_seconds > 0",
            found=repr(seconds),
            hint="Check the license's lease setting on the server",
        )
    return Lease(
        lease_id=str(_field(obj, "lease_id", str, what)),
        feature=str(_field(obj, "feature", str, what)),
        client_id=str(_field(obj, "client_id", str, what)),
        expires_at=parse_timestamp(str(_field(obj, "expires_at", str, what))),
        lease_seconds=float(seconds),
        overdraft=bool(_field(obj, "overdraft", bool, what)),
        renewed=bool(obj.get("renewed", False)),
    )


def parse_released(reply: Reply) -> bool:
    return bool(_field(_object(reply, "a release"), "released", bool, "a release"))


def parse_receipt(reply: Reply) -> UsageReceipt:
    what = "a usage record"
    obj = _object(reply, what)
    return UsageReceipt(
        meter=str(_field(obj, "meter", str, what)),
        amount=_int(obj, "amount", what),
        seq=_int(obj, "seq", what),
        used=_int(obj, "used", what),
        limit=_opt_int(obj, "limit", what),
        remaining=_opt_int(obj, "remaining", what),
        flagged=bool(obj.get("flagged", False)),
        replayed=bool(obj.get("replayed", False)),
    )


def parse_balances(reply: Reply) -> list[Balance]:
    what = "a balance query"
    meters = _field(_object(reply, what), "meters", list, what)
    assert isinstance(meters, list)
    out: list[Balance] = []
    for item in meters:
        if not isinstance(item, dict):
            raise ProtocolError(
                "Server balance entry is not an object",
                expected="a JSON object per meter",
                found=repr(item)[:80],
                hint="Check that the server speaks meterbox API v1",
            )
        period = item.get("period")
        start = item.get("period_start")
        license_id = item.get("license_id")
        policy = item.get("over_limit", "refuse")
        if policy not in ("refuse", "allow"):
            raise ProtocolError(
                "Server balance entry has an unknown over-limit policy",
                expected='over_limit "refuse" or "allow" (docs/api.md)',
                found=repr(policy)[:80],
                hint="Check that the server speaks meterbox API v1",
            )
        limit = _opt_int(item, "limit", what)
        used = _int(item, "used", what)
        out.append(
            Balance(
                meter=str(_field(item, "meter", str, what)),
                limit=limit,
                period=None if period is None else str(period),
                period_start=None if start is None else str(start),
                used=used,
                remaining=_opt_int(item, "remaining", what),
                over_limit=_over_limit(used, limit),
                policy=policy,
                license_id=None if license_id is None else str(license_id),
            )
        )
    return out


def _over_limit(used: int, limit: int | None) -> bool:
    return limit is not None and used > limit


# ----------------------------------------------------------------- errors

_BY_CODE: dict[str, type[MeterboxError]] = {
    "bad_request": BadRequestError,
    "too_large": BadRequestError,
    "unauthorized": UnauthorizedError,
    "forbidden": ForbiddenError,
    "report_overdue": ReportOverdue,
    "license_expired": LicenseExpired,
    "license_suspended": LicenseSuspended,
    "license_revoked": LicenseRevoked,
    "quota_exceeded": QuotaExceeded,
    "unknown_feature": UnknownFeature,
    "unknown_meter": UnknownMeter,
    "lease_not_found": LeaseLost,
    "lease_removed": LeaseLost,
    "no_seat": NoSeatAvailable,
    "policy_denied": PolicyDenied,
    "borrow_refused": BorrowRefused,
    "idempotency_conflict": IdempotencyConflictError,
    "unavailable": ServerUnreachableError,
    "cluster_unavailable": ServerUnreachableError,
}


def error_code(reply: Reply) -> str | None:
    body = reply.body
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("code"), str):
            return str(err["code"])
        # A cluster node without etcd quorum answers {"error": "cluster_unavailable",
        # "problem": ..., "hint": ...} (docs/api.md).
        if isinstance(err, str):
            return err
    return None


def error_from_reply(reply: Reply) -> MeterboxError:
    """The exception a non-2xx reply stands for, keeping the server's own message."""
    code = error_code(reply)
    message = ""
    if isinstance(reply.body, dict) and isinstance(reply.body.get("error"), dict):
        message = str(reply.body["error"].get("message", ""))
    elif isinstance(reply.body, dict) and isinstance(reply.body.get("problem"), str):
        message = str(reply.body["problem"])
    cls = _BY_CODE.get(code or "")
    if cls is None:
        if reply.status == 503:
            cls = ServerUnreachableError
        elif 400 <= reply.status < 500:
            cls = BadRequestError
        else:
            return ProtocolError(
                f"Server at {reply.url} answered HTTP {reply.status}",
                expected="a 2xx answer or an error body with a code from docs/api.md",
                found=f"code {code!r}, body {str(reply.body)[:120]!r}",
                hint="Look at the server log; spooled usage will be retried",
            )
    # The server's message already says what was expected and found, so it is kept
    # whole as the problem statement instead of being re-worded here.
    return cls(message or f"Server at {reply.url} refused the request with HTTP {reply.status}")


def unreachable_error(outcome: Unreachable | Reply, tried: Sequence[str]) -> ServerUnreachableError:
    found = (
        outcome.reason
        if isinstance(outcome, Unreachable)
        else f"HTTP {outcome.status} from {outcome.url}"
    )
    return ServerUnreachableError(
        "No meterbox server answered",
        expected=f"an answer from one of {', '.join(tried)}",
        found=found,
        # Only ``record`` spools, and it never raises this; for the requests that do
        # (checkout, heartbeat, release, balances) nothing was sent or kept.
        hint="Check that the server runs and the URL is right (--url or METERBOX_URL); "
        "the request was not delivered and nothing was kept to retry",
    )


# ----------------------------------------------------------------- delivery decisions


@dataclass(frozen=True)
class Delivered:
    receipt: UsageReceipt


@dataclass(frozen=True)
class Transient:
    reason: str


@dataclass(frozen=True)
class Rejected:
    error: MeterboxError


Delivery = Delivered | Transient | Rejected


def classify_delivery(outcome: Outcome) -> Delivery:
    """What a usage POST's outcome means for the event.

    Transient: no answer, any 5xx (the record may or may not be durable; resending
    with the same idempotency key is safe), a 2xx whose body does not parse
    (same reasoning), or 401 (no valid API key yet). Rejected: any other 4xx, which
    resending cannot change.
    """
    if isinstance(outcome, Unreachable):
        return Transient(outcome.reason)
    if 200 <= outcome.status < 300:
        try:
            return Delivered(parse_receipt(outcome))
        except ProtocolError as exc:
            return Transient(str(exc))
    if outcome.status >= 500:
        return Transient(f"HTTP {outcome.status} from {outcome.url}")
    if outcome.status == 401:
        # A missing, unknown or revoked API key is the site's configuration, fixed by
        # giving the client a key; the usage stays spooled until then, not dead-lettered.
        return Transient(f"HTTP 401 from {outcome.url}: {error_from_reply(outcome).problem}")
    return Rejected(error_from_reply(outcome))


def expect_ok(outcome: Outcome, tried: Sequence[str]) -> Reply:
    """The reply if it is a 2xx; otherwise the matching exception is raised."""
    if isinstance(outcome, Unreachable):
        raise unreachable_error(outcome, tried)
    if 200 <= outcome.status < 300:
        return outcome
    raise error_from_reply(outcome)


# ----------------------------------------------------------------- seat renewal


@dataclass(frozen=True)
class Renewed:
    lease: Lease


@dataclass(frozen=True)
class RenewLater:
    reason: str


@dataclass(frozen=True)
class Lost:
    error: MeterboxError


RenewalStep = Renewed | RenewLater | Lost


def renewal_interval(lease_seconds: float, fraction: float) -> float:
    """Seconds between heartbeats: a fraction of the lease, measured on the local clock.

    The lease length, not ``expires_at``, drives the schedule, so a server whose wall
    clock differs from ours cannot make us renew too late.
    """
    return max(0.05, lease_seconds * fraction)


def retry_interval(lease_seconds: float, fraction: float) -> float:
    """Seconds before retrying a heartbeat that got no answer: a few tries per interval."""
    return max(0.05, renewal_interval(lease_seconds, fraction) / 4.0)


def classify_renewal(outcome: Outcome) -> RenewalStep:
    if isinstance(outcome, Unreachable):
        return RenewLater(outcome.reason)
    if 200 <= outcome.status < 300:
        try:
            return Renewed(parse_lease(outcome))
        except ProtocolError as exc:
            return RenewLater(str(exc))
    if outcome.status >= 500:
        return RenewLater(f"HTTP {outcome.status} from {outcome.url}")
    err = error_from_reply(outcome)
    if isinstance(err, LeaseLost):
        removed = error_code(outcome) == "lease_removed"
        return Lost(
            LeaseLost(
                "The site administrator removed this seat"
                if removed
                else "The seat's lease is gone from the server",
                expected="the lease to be renewed by a heartbeat",
                found=f"{err.problem}",
                hint="Ask the site administrator before checking the seat out again"
                if removed
                else "Check out the seat again; the server may have restarted without "
                "state or the lease expired while the server was unreachable",
            )
        )
    return Lost(err)


NowFn = Callable[[], float]
RandFn = Callable[[], float]


# ----------------------------------------------------------------- settings


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs besides its transport, checked once at construction."""

    urls: tuple[str, ...]
    spool_path: Path
    client_id: str
    hostname: str | None
    timeout: float
    retry: RetryConfig
    renew_fraction: float
    flush_interval: float | None
    #: The site API key (``mbk_...``) sent as ``Authorization: Bearer``; kept out of repr.
    api_key: str | None = field(default=None, repr=False)
    #: The user declared with checkouts, for the site's seat options (asserted, not proven).
    user: str | None = None
    #: Ask the servers for the other cluster members (``GET /v1/cluster``) and fail
    #: over to them too (ADR 0026).
    discover: bool = False

    @classmethod
    def build(  # noqa: PLR0913 - one parameter per Client keyword, validated together
        cls,
        url: str | Sequence[str] | None,
        *,
        spool: str | Path | None,
        client_id: str | None,
        hostname: str | None,
        timeout: float,
        retry: RetryConfig | None,
        renew_fraction: float,
        flush_interval: float | None,
        environ: Mapping[str, str],
        home: Path,
        api_key: str | None = None,
        user: str | None = None,
        discover: bool = False,
    ) -> ClientConfig:
        if not 0.05 <= renew_fraction <= 0.9:
            raise ConfigError(
                "Renewal fraction is not usable",
                expected="a fraction of the lease between 0.05 and 0.9 (default 1/3)",
                found=repr(renew_fraction),
                hint="Renew well before the lease ends so one lost heartbeat is harmless",
            )
        if timeout <= 0:
            raise ConfigError(
                "Timeout is not usable",
                expected="a positive number of seconds",
                found=repr(timeout),
                hint="Use e.g. timeout=5.0",
            )
        if flush_interval is not None and flush_interval <= 0:
            raise ConfigError(
                "Flush interval is not usable",
                expected="a positive number of seconds, or None for no background flusher",
                found=repr(flush_interval),
                hint="Use e.g. flush_interval=10.0",
            )
        key = api_key if api_key is not None else environ.get(API_KEY_ENV) or None
        if key is not None and (not key.isascii() or not key.isprintable() or " " in key):
            raise ConfigError(
                "The API key is not usable",
                expected="the key as `meterbox server keys create` printed it, 'mbk_...'",
                found=f"a value of {len(key)} characters with spaces or control characters",
                hint=f"Pass api_key= or set {API_KEY_ENV} to the key alone",
            )
        return cls(
            api_key=key,
            user=user if user is not None else _login_name(),
            urls=resolve_urls(url, environ),
            spool_path=Path(spool) if spool is not None else default_spool_path(environ, home),
            client_id=client_id or default_client_id(),
            hostname=hostname,
            timeout=timeout,
            retry=retry or RetryConfig(),
            renew_fraction=renew_fraction,
            flush_interval=flush_interval,
            discover=discover,
        )
