"""A blocking etcd v3 client over several endpoints (etcd's grpc-gateway, via etcd3gw).

The only module of the server that speaks to etcd. Each call goes to the endpoint
that answered last; a connection error or a timeout moves on to the next one, and
when every endpoint has failed the call raises :class:`EtcdDown`. An answer from
etcd that is an error (no leader, lease not found...) raises :class:`EtcdDown` too:
whatever the cause, the caller cannot vouch for a grant.

Calls are blocking (``requests``); the coordinator runs them in worker threads, so
each thread gets its own HTTP sessions.

TLS (``etcds://``, docs/adr/0035): each session verifies the members' certificates
against the configured CA bundle (host name checked) and presents the client
certificate. The sessions ignore the environment (``trust_env = False``): with it,
``requests`` lets ``REQUESTS_CA_BUNDLE`` override the session's CA bundle and
``HTTPS_PROXY`` route etcd traffic through a proxy. :meth:`Etcd.probe` asks every
member once at start-up and raises :class:`~meterbox.errors.ConfigError` for a
certificate or protocol mismatch, so a misconfigured node refuses to start instead
of running without quorum.

A thread may bound a whole operation (several calls) with :meth:`Etcd.deadline`:
inside it each request's timeout is cut to what is left, and a call started after the
deadline raises :class:`EtcdDown` without a request. A cut-off node thereby answers
503 within one budget however many calls a checkout needs and however many members
stop answering, instead of one timeout per call and per member.

Every call's duration is recorded per operation (:class:`CallTimes`) for
``meterbox_cluster_etcd_request_seconds``.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exceptions

from meterbox.errors import ConfigError
from meterbox.server._cluster._tls import EtcdTls
from meterbox.server._cluster._url import Endpoint

#: etcd 3.4 serves its gateway under /v3/ (and the older /v3beta/).
API_PATH = "/v3/"


#: Operations per transaction: etcd's default ``--max-txn-ops``.
MAX_TXN_OPS: Final = 128


class EtcdDown(Exception):
    """No endpoint gave a usable answer; ``str()`` says what the last one did."""


#: Upper bounds (seconds) of the request-time histogram's buckets; +Inf is implied.
BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class CallTimes:
    """Cumulative histogram of call durations per operation (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, operation: str, seconds: float) -> None:
        with self._lock:
            counts = self._counts.setdefault(operation, [0] * (len(BUCKETS) + 1))
            counts[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sums[operation] = self._sums.get(operation, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """operation -> (cumulative counts per bucket including +Inf, sum of seconds)."""
        with self._lock:
            out = {}
            for op, counts in self._counts.items():
                cumulative, total = [], 0
                for c in counts:
                    total += c
                    cumulative.append(total)
                out[op] = (cumulative, self._sums[op])
            return out


def _cause(exc: BaseException) -> BaseException | None:
    """The ``requests`` error etcd3gw re-raised as its own (it keeps it as context)."""
    return exc.__cause__ or exc.__context__


def _tls_failure(
    endpoint: Endpoint, detail: str, tls: EtcdTls | None, *, plain_port: bool = False
) -> ConfigError:
    if tls is None:
        return ConfigError(
            f"etcd member {endpoint} closed the connection before answering",
            expected="an etcd member serving plain HTTP on its client URL (etcd://)",
            found=detail[:300],
            hint="if etcd serves TLS (--cert-file), write the cluster URL as etcds://... "
            "and set cluster_ca, cluster_cert and cluster_key",
        )
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        if "Hostname mismatch" in detail or "IP address mismatch" in detail:
            expected = f"a certificate for {endpoint.host} (in its subject alternative names)"
            hint = (
                "list the members by the names or addresses their certificates carry, "
                "or reissue the member certificates with this name"
            )
        else:
            expected = f"a server certificate signed by a CA in {tls.ca}"
            hint = (
                "set cluster_ca to the CA that signed the etcd members' --cert-file "
                "(etcd's --trusted-ca-file)"
            )
        return ConfigError(
            f"etcd member {endpoint} presented a certificate this node does not trust",
            expected=expected,
            found=detail[:300],
            hint=hint,
        )
    if plain_port or "WRONG_VERSION_NUMBER" in detail or "wrong version number" in detail:
        return ConfigError(
            f"etcd member {endpoint} does not speak TLS",
            expected="an etcd member serving TLS on its client URL (etcds://)",
            found=detail[:300],
            hint="write the cluster URL as etcd://... for a plain-HTTP etcd, or give the "
            "member --cert-file and --key-file",
        )
    return ConfigError(
        f"etcd member {endpoint} refused this node's TLS connection",
        expected=(
            f"a client certificate signed by a CA etcd trusts (cluster_cert {tls.cert})"
            if tls.cert
            else "a client certificate (etcd runs with --client-cert-auth)"
        ),
        found=detail[:300],
        hint="set cluster_cert and cluster_key to a client certificate signed by etcd's "
        "--trusted-ca-file CA",
    )


#: What a plain-HTTP request to a TLS port ends in (etcd closes or answers 400).
_CLOSED: Final = (
    "RemoteDisconnected",
    "Connection aborted",
    "BadStatusLine",
    "HTTP request to an HTTPS server",
)


def _failure(exc: BaseException) -> tuple[str, str]:
    """(kind, detail) of a failed call: ``tls``, ``closed`` or ``down``."""
    cause = _cause(exc)
    detail = str(cause) if cause is not None else str(exc)
    if isinstance(cause, requests.exceptions.SSLError):
        return "tls", detail
    if any(s in detail for s in _CLOSED):
        return "closed", detail
    return "down", detail


def b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix``."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return b64(bytes(raw))


def unchanged_since(prefix: str, revision: int) -> dict[str, Any]:
    """Guard: no key under ``prefix`` was created or changed after ``revision``.

    A deleted key passes: etcd compares only the keys that exist at the transaction.
    """
    return {
        "key": b64(prefix),
        "range_end": prefix_end(prefix),
        "result": "LESS",
        "target": "MOD",
        "mod_revision": revision + 1,
    }


def none_under(prefix: str) -> dict[str, Any]:
    """Guard: no key exists under ``prefix`` (etcd compares an empty range as revision 0)."""
    return {
        "key": b64(prefix),
        "range_end": prefix_end(prefix),
        "result": "LESS",
        "target": "CREATE",
        "create_revision": 1,
    }


def none_older_under(prefix: str, create_revision: int) -> dict[str, Any]:
    """Guard: every key under ``prefix`` was created at or after ``create_revision``."""
    return {
        "key": b64(prefix),
        "range_end": prefix_end(prefix),
        "result": "GREATER",
        "target": "CREATE",
        "create_revision": create_revision - 1,
    }


@dataclass(frozen=True)
class KV:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int


def _kv(obj: dict[str, Any]) -> KV:
    return KV(
        key=unb64(obj["key"]).decode(),
        value=unb64(obj.get("value", "")),
        create_revision=int(obj.get("create_revision", 0)),
        mod_revision=int(obj.get("mod_revision", 0)),
        lease=int(obj.get("lease", 0)),
    )


class Etcd:
    """Several etcd members; see the module docstring."""

    def __init__(
        self,
        endpoints: Sequence[Endpoint],
        *,
        timeout: float = 1.0,
        tls: EtcdTls | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self.tls = tls
        self.times = CallTimes()
        self._current = 0
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # see the module docstring
        if self.tls is not None:
            session.verify = str(self.tls.ca)
            session.cert = self.tls.client_cert
        return session

    def _client(self, e: Endpoint) -> etcd3gw.Etcd3Client:
        return etcd3gw.Etcd3Client(
            host=e.host,
            port=e.port,
            protocol="https" if self.tls else "http",
            timeout=self.timeout,
            api_path=API_PATH,
            session=self._session(),
        )

    def _clients(self) -> list[etcd3gw.Etcd3Client]:
        clients: list[etcd3gw.Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = [self._client(e) for e in self.endpoints]
            self._local.clients = clients
        return clients

    def probe(self) -> dict[Endpoint, str | None]:
        """Ask every member once: endpoint -> None (answered) or why it did not.

        A member that is down is only reported (the node starts without quorum and
        waits); a certificate or protocol mismatch raises :class:`ConfigError`.
        """
        out: dict[Endpoint, str | None] = {}
        for endpoint in self.endpoints:
            client = self._client(endpoint)
            try:
                client.post(client.get_url("maintenance/status"), json={})
            except etcd_exceptions.Etcd3Exception as exc:
                kind, detail = _failure(exc)
                # A plain port may end the TLS hello with an SSL error or with a reset
                # connection, depending on timing: either way, ask it in plain HTTP.
                if kind in ("tls", "closed") and self._answers_plain(endpoint):
                    # etcd closes a TLS hello on a plain port without a word: ask in
                    # plain HTTP to tell that from a refused client certificate.
                    detail = f"{detail}; the member answers plain HTTP"
                    raise _tls_failure(endpoint, detail, self.tls, plain_port=True) from None
                if kind in ("tls", "closed"):
                    raise _tls_failure(endpoint, detail, self.tls) from None
                if isinstance(exc, etcd_exceptions.Etcd3Exception) and "Not Found" in detail:
                    raise ConfigError(
                        f"etcd member {endpoint} does not serve its HTTP/JSON gateway",
                        expected=f"answers under {API_PATH} (etcd's grpc-gateway)",
                        found=f"404 {detail[:200]}",
                        hint="add 'enable-grpc-gateway: true' to the member's config file "
                        "(etcd 3.4 enables it by default only on the command line)",
                    ) from None
                out[endpoint] = detail[:300] or type(exc).__name__
            else:
                out[endpoint] = None
            finally:
                client.session.close()
        return out

    def _answers_plain(self, endpoint: Endpoint) -> bool:
        plain = Etcd([endpoint], timeout=self.timeout)
        client = plain._client(endpoint)
        try:
            client.post(client.get_url("maintenance/status"), json={})
        except etcd_exceptions.Etcd3Exception:
            return False
        finally:
            client.session.close()
        return True

    @contextlib.contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Every call this thread makes inside the block ends within ``seconds`` from now.

        Nested blocks keep the earlier deadline.
        """
        before: float | None = getattr(self._local, "deadline", None)
        end = time.monotonic() + seconds
        self._local.deadline = end if before is None else min(before, end)
        try:
            yield
        finally:
            self._local.deadline = before

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        began = time.perf_counter()
        try:
            return self._call(path, body)
        finally:
            self.times.observe(path, time.perf_counter() - began)

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        clients = self._clients()
        last = "no endpoint tried"
        start = self._current
        deadline: float | None = getattr(self._local, "deadline", None)
        for i in range(len(clients)):
            index = (start + i) % len(clients)
            client = clients[index]
            client.timeout = self.timeout
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise EtcdDown(f"no answer within the operation's time budget ({last})")
                client.timeout = min(self.timeout, left)
            try:
                out = client.post(client.get_url(path), json=body)
            except (
                etcd_exceptions.ConnectionFailedError,
                etcd_exceptions.ConnectionTimeoutError,
            ) as exc:
                kind, detail = _failure(exc)
                why = f"TLS: {detail[:200]}" if kind == "tls" else type(exc).__name__
                last = f"{self.endpoints[index]}: {why}"
                continue
            except etcd_exceptions.Etcd3Exception as exc:
                # etcd answered with an error (e.g. no leader): another member may do better.
                last = f"{self.endpoints[index]}: {str(exc)[:200]}"
                continue
            self._current = index
            if not isinstance(out, dict):
                raise EtcdDown(f"{self.endpoints[index]}: answer is not a JSON object")
            return out
        raise EtcdDown(last)

    # ------------------------------------------------------------------ KV
    def range_prefix(self, prefix: str, *, keys_only: bool = False) -> list[KV]:
        out = self.call(
            "kv/range",
            {"key": b64(prefix), "range_end": prefix_end(prefix), "keys_only": keys_only},
        )
        return [_kv(x) for x in out.get("kvs", [])]

    def range_at(self, prefix: str) -> tuple[list[KV], int]:
        """Every key under ``prefix`` with values, and the store revision of the read."""
        out = self.call("kv/range", {"key": b64(prefix), "range_end": prefix_end(prefix)})
        revision = int(out.get("header", {}).get("revision", 0))
        return [_kv(x) for x in out.get("kvs", [])], revision

    def create_guarded(
        self, key: str, value: bytes, lease: int, guards: Sequence[dict[str, Any]]
    ) -> int:
        """Put ``key`` only if it does not exist and every guard holds (one transaction).

        The guards come from :func:`unchanged_since`, :func:`none_under` and
        :func:`none_older_under`. Returns the revision of the put, or 0 if nothing was
        written.
        """
        txn = {
            "compare": [
                {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0},
                *guards,
            ],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}],
            "failure": [],
        }
        out = self.call("kv/txn", txn)
        if not out.get("succeeded", False):
            return 0
        return int(out.get("header", {}).get("revision", 0))

    def create(self, key: str, value: bytes, lease: int) -> bool:
        """Put ``key`` only if it does not exist (a transaction); whether it was created."""
        txn = {
            "compare": [
                {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            ],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease}}],
            "failure": [],
        }
        return bool(self.call("kv/txn", txn).get("succeeded", False))

    def put_all(self, items: Sequence[tuple[str, bytes]], lease: int) -> None:
        """Put every ``(key, value)`` on ``lease``: one transaction per :data:`MAX_TXN_OPS`."""
        for start in range(0, len(items), MAX_TXN_OPS):
            puts = [
                {"request_put": {"key": b64(k), "value": b64(v), "lease": lease}}
                for k, v in items[start : start + MAX_TXN_OPS]
            ]
            self.call("kv/txn", {"compare": [], "success": puts, "failure": []})

    def get_first(self, keys: Sequence[str]) -> KV | None:
        """The first of ``keys`` that exists, read in one (linearizable) transaction."""
        found: KV | None = None
        for start in range(0, len(keys), MAX_TXN_OPS):
            ranges = [{"request_range": {"key": b64(k)}} for k in keys[start : start + MAX_TXN_OPS]]
            out = self.call("kv/txn", {"compare": [], "success": ranges, "failure": []})
            for response in out.get("responses", []):
                kvs = response.get("response_range", {}).get("kvs") or []
                if kvs and found is None:
                    found = _kv(kvs[0])
            if found is not None:
                return found
        return found

    def put(self, key: str, value: bytes, lease: int = 0) -> None:
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = lease
        self.call("kv/put", body)

    def delete(self, key: str) -> None:
        self.call("kv/deleterange", {"key": b64(key)})

    # --------------------------------------------------------------- leases
    def grant(self, ttl: int) -> int:
        return int(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's TTL after the refresh; 0 or less if it has already run out."""
        result = self.call("lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", -1))

    def revoke(self, lease: int) -> None:
        self.call("kv/lease/revoke", {"ID": lease})

    def time_to_live(self, lease: int) -> tuple[int, int]:
        """(remaining TTL, granted TTL); remaining is -1 once the lease has run out."""
        out = self.call("kv/lease/timetolive", {"ID": lease})
        return int(out.get("TTL", -1)), int(out.get("grantedTTL", 0))

    def cluster_id(self) -> str:
        header = self.call("maintenance/status", {}).get("header", {})
        return str(header.get("cluster_id", ""))
