"""The ``--cluster`` value: ``etcd[s]://host:port,host:port,...`` (pure parsing, no I/O).

Grammar (docs/adr/0024, docs/adr/0035)::

    cluster  = ("etcd://" / "etcds://") endpoint *("," endpoint)
    endpoint = host [":" port]          ; port 1..65535, default 2379
    host     = DNS name | IPv4 | "[" IPv6 "]"

At most :data:`MAX_ENDPOINTS` endpoints; no path, user, query or duplicates.
``etcds://`` speaks HTTPS to every member (verified server certificates, optionally a
client certificate); ``etcd://`` plain HTTP. One list never mixes the two.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from meterbox.errors import ConfigError

SCHEME: Final = "etcd://"
TLS_SCHEME: Final = "etcds://"
DEFAULT_PORT: Final = 2379
MAX_ENDPOINTS: Final = 15
_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_EXAMPLE: Final = "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _bad(found: str) -> ConfigError:
    return ConfigError(
        "The cluster setting is not an etcd endpoint list",
        expected=f"etcd://host:port[,host:port...] (or etcds:// for TLS), e.g. {_EXAMPLE}",
        found=found,
        hint="Set --cluster, the TOML key cluster or METERBOX_CLUSTER to the etcd "
        "members' client addresses; leave it unset for a single server",
    )


def _endpoint(text: str) -> Endpoint:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise _bad(f"{text!r} (no closing ']')")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _bad(f"{text!r} (not an IPv6 address in brackets)") from None
        if rest and not rest.startswith(":"):
            raise _bad(f"{text!r} (expected ':port' after ']')")
        port_text = rest[1:] if rest else None
    else:
        host, sep, port_text_ = text.partition(":")
        port_text = port_text_ if sep else None
        if not _NAME.fullmatch(host):
            raise _bad(f"{text!r} (not a host name or IPv4 address)")
    if port_text is None:
        return Endpoint(host, DEFAULT_PORT)
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _bad(f"{text!r} (port {port_text!r} is not 1..65535)")
    return Endpoint(host, int(port_text))


def uses_tls(value: str) -> bool:
    """Whether a cluster value (already parsed once) asks for TLS: ``etcds://``."""
    return value.startswith(TLS_SCHEME)


def parse_cluster_url(value: str) -> tuple[Endpoint, ...]:
    """The endpoints of ``value``; :class:`ConfigError` naming what is wrong otherwise."""
    if value.startswith(TLS_SCHEME):
        scheme = TLS_SCHEME
    elif value.startswith(SCHEME):
        scheme = SCHEME
    else:
        raise _bad(f"{value[:80]!r} (does not start with {SCHEME} or {TLS_SCHEME})")
    body = value[len(scheme) :]
    if not body:
        raise _bad(f"no endpoint after {scheme}")
    if any(c in body for c in "/?#@ "):
        raise _bad(f"{body[:80]!r} (a path, query, user or space; only host:port is allowed)")
    parts = body.split(",")
    if len(parts) > MAX_ENDPOINTS:
        raise _bad(f"{len(parts)} endpoints (at most {MAX_ENDPOINTS})")
    endpoints = tuple(_endpoint(p) for p in parts)
    if len(set(endpoints)) != len(endpoints):
        raise _bad(f"{body[:80]!r} (an endpoint is listed twice)")
    return endpoints


def format_cluster_url(endpoints: tuple[Endpoint, ...], *, tls: bool = False) -> str:
    return (TLS_SCHEME if tls else SCHEME) + ",".join(str(e) for e in endpoints)
