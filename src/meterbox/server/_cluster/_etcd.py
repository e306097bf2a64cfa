"""A blocking etcd v3 client over several endpoints (etcd's grpc-gateway, via etcd3gw).

The only module of the server that speaks to etcd. Each call goes to the endpoint
that answered last; a connection error or a timeout moves on to the next one, and
when every endpoint has failed the call raises :class:`EtcdDown`. An answer from
etcd that is an error (no leader, lease not found...) raises :class:`EtcdDown` too:
whatever the cause, the caller cannot vouch for a grant.

Calls are blocking (``requests``); the coordinator runs them in worker threads, so
each thread gets its own HTTP sessions.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import etcd3gw
from etcd3gw import exceptions as etcd_exceptions

from meterbox.server._cluster._url import Endpoint

#: etcd 3.4 serves its gateway under /v3/ (and the older /v3beta/).
API_PATH = "/v3/"


class EtcdDown(Exception):
    """No endpoint gave a usable answer; ``str()`` says what the last one did."""


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

    def __init__(self, endpoints: Sequence[Endpoint], *, timeout: float = 1.0) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint")
        self.endpoints = tuple(endpoints)
        self.timeout = timeout
        self._current = 0
        self._local = threading.local()

    def _clients(self) -> list[etcd3gw.Etcd3Client]:
        clients: list[etcd3gw.Etcd3Client] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = [
                etcd3gw.Etcd3Client(
                    host=e.host, port=e.port, timeout=self.timeout, api_path=API_PATH
                )
                for e in self.endpoints
            ]
            self._local.clients = clients
        return clients

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>`` on the first endpoint that answers."""
        clients = self._clients()
        last = "no endpoint tried"
        start = self._current
        for i in range(len(clients)):
            index = (start + i) % len(clients)
            client = clients[index]
            try:
                out = client.post(client.get_url(path), json=body)
            except (
                etcd_exceptions.ConnectionFailedError,
                etcd_exceptions.ConnectionTimeoutError,
            ) as exc:
                last = f"{self.endpoints[index]}: {type(exc).__name__}"
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
