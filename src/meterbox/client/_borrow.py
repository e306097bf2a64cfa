"""Borrowed seats on the client: requests, the machine code, the token files. No network.

A borrow (docs/adr/0028-seat-borrowing.md) leaves the client with a borrow token
(docs/spec/borrow.md) that lets it use a seat with no server until the token expires.
This module builds the borrow and return requests, computes the machine code, keeps
the token and the server's instance key in the borrow directory, and verifies a token
offline. :class:`meterbox.client.Client` drives it.

Files, in the borrow directory (by default ``borrows/`` beside the spool):

* ``<feature>.borrow``: the token exactly as the server signed it (one JSON line);
* ``instance-<key id>.pub``: the server's instance public key, raw Ed25519 in base64,
  pinned at the first borrow from that server (or given by the application).

What the machine binding does and does not stop is in docs/threat-model.md.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from meterbox import crypto
from meterbox._fs import atomic_write
from meterbox.client._core import Reply, Request, _field, _object, parse_timestamp
from meterbox.errors import BadRequestError, ConfigError, FormatError, StateError
from meterbox.licenses import (
    MAX_BORROW_HOURS,
    BorrowToken,
    Fields,
    check_lease_id,
    instance_key_id,
    machine_digest,
    strict_loads,
)

#: Overrides the machine code (containers, tests): the value is used as it is.
MACHINE_CODE_ENV: Final = "METERBOX_MACHINE_CODE"
_MACHINE_ID_FILES: Final = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_CODE_CONTEXT: Final = b"meterbox-machine/1\x00"


def machine_code(environ: Mapping[str, str] | None = None) -> str:
    """This machine's code: ``METERBOX_MACHINE_CODE``, else a digest of its machine-id.

    The machine-id (systemd's, stable across reboots, new on a reinstall or a cloned
    image that regenerates it) is hashed so the code says nothing about the machine;
    without one the host name is used, which is weaker (docs/threat-model.md).
    """
    env = os.environ if environ is None else environ
    override = env.get(MACHINE_CODE_ENV)
    if override:
        return override
    for path in _MACHINE_ID_FILES:
        try:
            ident = Path(path).read_text().strip()
        except OSError:
            continue
        if ident:
            return hashlib.sha256(_CODE_CONTEXT + ident.encode()).hexdigest()
    return hashlib.sha256(_CODE_CONTEXT + socket.gethostname().encode()).hexdigest()


@dataclass(frozen=True)
class Borrow:
    """A borrowed seat: the verified token, its file bytes, and the key that signed it."""

    token: BorrowToken
    data: bytes
    instance_key: bytes

    @property
    def lease_id(self) -> str:
        return self.token.lease_id

    @property
    def feature(self) -> str:
        return self.token.feature

    @property
    def expires_at(self) -> datetime:
        return self.token.expires


def borrow_request(
    feature: str,
    client_id: str,
    hours: int,
    code: str,
    hostname: str | None,
    user: str | None,
) -> Request:
    if isinstance(hours, bool) or not isinstance(hours, int) or not 1 <= hours <= MAX_BORROW_HOURS:
        raise BadRequestError(
            "The borrow's length is not usable",
            expected=f"a whole number of hours from 1 to {MAX_BORROW_HOURS}",
            found=repr(hours),
            hint="Ask for at most the license's max_borrow_hours",
        )
    body: dict[str, object] = {
        "feature": feature,
        "client_id": client_id,
        "hours": hours,
        "machine": machine_digest(code),
    }
    if hostname is not None:
        body["hostname"] = hostname
    if user is not None:
        body["user"] = user
    return Request("POST", "/v1/seats/borrow", body)


def return_request(lease_id: str, code: str) -> Request:
    return Request(
        "POST", "/v1/seats/return", {"lease_id": lease_id, "machine": machine_digest(code)}
    )


def return_for(store: BorrowStore, feature: str, code: str) -> Request:
    """The request that gives back the borrow of ``feature`` kept in ``store``."""
    data = store.load(feature)
    if data is None:
        raise BadRequestError(
            f"No borrowed seat of {feature!r} on this machine",
            expected=f"a borrow token in {store.directory}",
            found="none",
            hint="Borrow a seat first, or check the feature name",
        )
    return return_request(lease_id_of(data), code)


def public_key(raw_or_b64: bytes | str) -> tuple[Ed25519PublicKey, bytes]:
    """An instance key given as 32 raw bytes or their base64; also its raw bytes."""
    raw = crypto.b64d(raw_or_b64, "instance key") if isinstance(raw_or_b64, str) else raw_or_b64
    try:
        return crypto.ed25519_public_from_raw(raw), raw
    except FormatError as exc:
        raise ConfigError(
            "The instance key is not usable",
            expected="the server's raw Ed25519 public key (32 bytes, or their base64)",
            found=f"{len(raw)} bytes",
            hint="Copy the key from the borrow reply or the server's status",
        ) from exc


def parse_borrow(reply: Reply, pinned: bytes | None, code: str, now: datetime) -> Borrow:
    """The borrow a server answered, verified as it will be offline (signature, machine, time).

    ``pinned`` is the instance key already trusted for this server; a reply signed by
    another key is refused, so a server that answers for the real one cannot hand out
    tokens the application would then trust.
    """
    what = "a borrow"
    obj = _object(reply, what)
    token_text = str(_field(obj, "token", str, what))
    key, raw = public_key(str(_field(obj, "instance_key", str, what)))
    if pinned is not None and not crypto.constant_time_equal(pinned, raw):
        raise StateError(
            "The server signed the borrow with a key this client does not trust",
            expected=f"instance key {instance_key_id(pinned).hex()}",
            found=f"instance key {instance_key_id(raw).hex()}",
            hint="Borrow from your own license server; if it was set up again, remove the "
            "old instance-*.pub from the borrow directory",
        )
    data = token_text.encode("utf-8")
    token = BorrowToken.verify(data, instance_key=key, machine_code=code, now=now)
    parse_timestamp(str(_field(obj, "expires_at", str, what)))
    return Borrow(token, data, raw)


def parse_returned(reply: Reply) -> bool:
    return bool(_field(_object(reply, "a return"), "returned", bool, "a return"))


def lease_id_of(data: bytes) -> str:
    """The lease id a token file names, read without verifying it.

    Only for a return: the server decides it by the API key and the machine, so an
    edited id can at worst return another borrow of the same key on the same machine.
    """
    envelope = Fields(strict_loads(data, "borrow token"), "borrow token")
    payload_b64 = envelope.raw("payload")
    if not isinstance(payload_b64, str):
        raise FormatError("borrow token has no payload", expected="base64 text", found="none")
    payload = Fields(strict_loads(crypto.b64d(payload_b64), "borrow token payload"), "borrow token")
    return check_lease_id(payload.raw("lease_id"))


class BorrowStore:
    """The borrow directory: one token file per feature and the pinned instance keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _token_path(self, feature: str) -> Path:
        return self.directory / f"{feature}.borrow"

    def _key_path(self, key_id: bytes) -> Path:
        return self.directory / f"instance-{key_id.hex()}.pub"

    def pinned(self) -> bytes | None:
        """The one instance key pinned here, or ``None`` before the first borrow."""
        keys = sorted(self.directory.glob("instance-*.pub")) if self.directory.exists() else []
        if len(keys) > 1:
            raise StateError(
                "The borrow directory pins more than one server",
                expected="one instance-*.pub file",
                found=", ".join(p.name for p in keys),
                hint="Keep the key of your license server and remove the others",
            )
        return crypto.b64d(keys[0].read_text().strip(), "pinned instance key") if keys else None

    def save(self, borrow: Borrow) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_file = self._key_path(instance_key_id(borrow.instance_key))
        if not key_file.exists():
            atomic_write(key_file, (crypto.b64e(borrow.instance_key) + "\n").encode())
        atomic_write(self._token_path(borrow.feature), borrow.data)

    def load(self, feature: str) -> bytes | None:
        path = self._token_path(feature)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    def forget(self, feature: str) -> None:
        self._token_path(feature).unlink(missing_ok=True)


def verify_offline(
    store: BorrowStore,
    feature: str,
    *,
    code: str,
    now: datetime,
    instance_key: bytes | str | None = None,
) -> Borrow:
    """The borrow of ``feature`` kept in ``store``, verified with no server; else raise.

    ``instance_key`` is the key the application trusts (e.g. shipped in its settings);
    without it the key pinned at the first borrow is used.
    """
    data = store.load(feature)
    if data is None:
        raise StateError(
            f"No borrowed seat of {feature!r} on this machine",
            expected=f"a borrow token in {store.directory}",
            found="none",
            hint="Borrow the seat (`meterbox client borrow`) while the server is reachable",
        )
    raw = public_key(instance_key)[1] if instance_key is not None else store.pinned()
    if raw is None:
        raise StateError(
            "No instance key to check the borrow token with",
            expected=f"an instance-*.pub in {store.directory}, or instance_key=",
            found="none",
            hint="Borrow again while the server is reachable",
        )
    key, _ = public_key(raw)
    token = BorrowToken.verify(data, instance_key=key, machine_code=code, now=now, feature=feature)
    return Borrow(token, data, raw)
