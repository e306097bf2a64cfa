"""Site API keys: who may check out seats and record usage on this server. Pure.

A key is a bearer secret the site administrator creates (``meterbox server keys
create``) and hands to the machines that run the vendor's application::

    mbk_<key id: 8 hex digits>.<secret: 32 random bytes, unpadded base64url>

Only the SHA-256 digest of the whole token is kept
(docs/adr/0023-seat-access-and-administration.md): a copy of the key file does not
let anyone authenticate. A presented token is looked up by its key id, which is not
secret, and its digest compared with
:func:`hmac.compare_digest`, so the comparison takes the same time wherever the digests
first differ.

Invariants:

* a :class:`KeyRing` is immutable; ``create`` and ``revoke`` return a new ring;
* key ids are unique within a ring and never reused, revoked keys included;
* a revoked key never authenticates again;
* a key limited to features (or meters) allows exactly those, and no others.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import hashes

from meterbox.errors import ConfigError, ForbiddenError, StateError, UnauthorizedError

#: Version of the key file's JSON (``api-keys.json``); an unknown one is refused.
KEY_FILE_VERSION = 1
TOKEN_PREFIX = "mbk_"  # noqa: S105 - the public prefix of every key, not a secret
KEY_ID_BYTES = 4
SECRET_BYTES = 32
_TOKEN = re.compile(r"^mbk_([0-9a-f]{8})\.([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_SCOPE = re.compile(r"^[^\s,]{1,64}$")


def digest(token: str) -> str:
    """The stored form of a token: hex SHA-256 of its UTF-8 bytes."""
    h = hashes.Hash(hashes.SHA256())
    h.update(token.encode("utf-8"))
    return h.finalize().hex()


@dataclass(frozen=True)
class ApiKey:
    """One site API key as stored: never the secret, only its digest."""

    key_id: str
    name: str
    digest: str
    created_at: datetime
    #: The group the key's holders belong to (for options-file reservations and limits).
    group: str | None = None
    #: Features the key may check out; ``None`` means every feature.
    features: tuple[str, ...] | None = None
    #: Meters the key may record usage on; ``None`` means every meter.
    meters: tuple[str, ...] | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allow_feature(self, feature: str) -> None:
        """Raise :class:`ForbiddenError` unless this key may check out ``feature``."""
        if self.features is not None and feature not in self.features:
            raise ForbiddenError(
                f"API key {self.name!r} may not check out feature {feature!r}",
                expected="a feature among the key's: " + ", ".join(self.features),
                found=repr(feature),
                hint="Ask the site administrator for a key that allows it "
                "(`meterbox server keys create --feature ...`)",
            )

    def allow_meter(self, meter: str) -> None:
        """Raise :class:`ForbiddenError` unless this key may record usage on ``meter``."""
        if self.meters is not None and meter not in self.meters:
            raise ForbiddenError(
                f"API key {self.name!r} may not record usage on meter {meter!r}",
                expected="a meter among the key's: " + ", ".join(self.meters),
                found=repr(meter),
                hint="Ask the site administrator for a key that allows it "
                "(`meterbox server keys create --meter ...`)",
            )

    def summary(self) -> dict[str, Any]:
        """What ``keys list`` shows: everything but the digest."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "group": self.group,
            "features": list(self.features) if self.features is not None else None,
            "meters": list(self.meters) if self.meters is not None else None,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "digest": self.digest}


def _bad_file(found: str) -> StateError:
    return StateError(
        "The API key file is damaged",
        expected=f"version {KEY_FILE_VERSION} JSON as `meterbox server keys` writes it",
        found=found,
        hint="Restore api-keys.json from backup, or remove it and create the keys again",
    )


def _scope_list(value: object, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _bad_file(f"{what} is {type(value).__name__}, not a list of names")
    return tuple(value)


def _time(value: object, what: str) -> datetime:
    if not isinstance(value, str):
        raise _bad_file(f"{what} is {type(value).__name__}, not an ISO-8601 time")
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise _bad_file(f"{what} is {value[:40]!r}, not an ISO-8601 time") from None
    if t.utcoffset() is None:
        raise _bad_file(f"{what} {value[:40]!r} has no time zone")
    return t


def _key_from_json(obj: object) -> ApiKey:
    if not isinstance(obj, dict):
        raise _bad_file(f"a key entry that is {type(obj).__name__}, not an object")
    for field in ("key_id", "name", "digest"):
        if not isinstance(obj.get(field), str):
            raise _bad_file(f"a key entry without a text {field!r}")
    if not re.fullmatch(r"[0-9a-f]{8}", obj["key_id"]) or not re.fullmatch(
        r"[0-9a-f]{64}", obj["digest"]
    ):
        raise _bad_file(f"key {obj['key_id'][:20]!r} with a malformed id or digest")
    group = obj.get("group")
    if group is not None and not isinstance(group, str):
        raise _bad_file(f"key {obj['key_id']!r} has a group that is not text")
    revoked = obj.get("revoked_at")
    return ApiKey(
        key_id=obj["key_id"],
        name=obj["name"],
        digest=obj["digest"],
        created_at=_time(obj.get("created_at"), "created_at"),
        group=group,
        features=_scope_list(obj.get("features"), "features"),
        meters=_scope_list(obj.get("meters"), "meters"),
        revoked_at=None if revoked is None else _time(revoked, "revoked_at"),
    )


def _check_name(kind: str, value: str, pattern: re.Pattern[str], example: str) -> None:
    if not pattern.fullmatch(value):
        raise ConfigError(
            f"The key's {kind} is not usable",
            expected=f"{example}",
            found=repr(value[:80]),
            hint=f"Pass another {kind}",
        )


@dataclass(frozen=True)
class NewKey:
    """A key just created: the stored entry and the token, shown once and never again."""

    key: ApiKey
    token: str


class KeyRing:
    """Every API key of a site, revoked ones included (their ids are never reused)."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys: dict[str, ApiKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise _bad_file(f"key id {key.key_id!r} twice")
            self._keys[key.key_id] = key

    def __iter__(self) -> Any:
        return iter(sorted(self._keys.values(), key=lambda k: (k.created_at, k.key_id)))

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    def active(self) -> list[ApiKey]:
        return [k for k in self if not k.revoked]

    # ----------------------------------------------------------------- checks
    def authenticate(self, token: str) -> ApiKey:
        """The live key ``token`` belongs to; :class:`UnauthorizedError` otherwise.

        The message never repeats the token, so a refusal that reaches a log leaks nothing.
        """
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise UnauthorizedError(
                "The API key is not in the form this server issues",
                expected=f"'{TOKEN_PREFIX}<8 hex digits>.<43 base64url characters>'",
                found=f"a value of {len(token)} characters",
                hint="Pass the key exactly as `meterbox server keys create` printed it",
            )
        key = self._keys.get(match.group(1))
        # Compared in constant time against the stored digest (or a dummy one, so an
        # unknown id costs the same as a wrong secret).
        stored = key.digest if key is not None else "0" * 64
        if not hmac.compare_digest(digest(token).encode(), stored.encode()) or key is None:
            raise UnauthorizedError(
                "The API key is not known to this server",
                expected="a key created on this server with `meterbox server keys create`",
                found=f"key id {match.group(1)} with a secret that does not match",
                hint="Ask the site administrator for a key",
            )
        if key.revoked_at is not None:
            raise UnauthorizedError(
                f"API key {key.name!r} was revoked",
                expected="a key that is not revoked",
                found=f"revoked at {key.revoked_at.isoformat()}",
                hint="Ask the site administrator for a new key",
            )
        return key

    # ---------------------------------------------------------------- changes
    def create(
        self,
        name: str,
        now: datetime,
        rng: Callable[[int], bytes],
        *,
        group: str | None = None,
        features: Sequence[str] | None = None,
        meters: Sequence[str] | None = None,
    ) -> tuple[KeyRing, NewKey]:
        """A ring with one more key, and that key's token (to show once)."""
        _check_name("name", name, _NAME, "1-64 letters, digits, '.', '_', '@' or '-'")
        if any(k.name == name for k in self.active()):
            raise ConfigError(
                f"An active API key is already named {name!r}",
                expected="a name no active key has",
                found=name,
                hint="Choose another name, or revoke the old key first",
            )
        if group is not None:
            _check_name("group", group, _NAME, "1-64 letters, digits, '.', '_', '@' or '-'")
        for kind, names in (("feature", features), ("meter", meters)):
            for item in names or ():
                _check_name(kind, item, _SCOPE, f"a {kind} name without spaces or commas")
        while True:
            key_id = rng(KEY_ID_BYTES).hex()
            if key_id not in self._keys:
                break
        secret = base64.urlsafe_b64encode(rng(SECRET_BYTES)).rstrip(b"=").decode("ascii")
        token = f"{TOKEN_PREFIX}{key_id}.{secret}"
        key = ApiKey(
            key_id=key_id,
            name=name,
            digest=digest(token),
            created_at=now,
            group=group,
            features=None if features is None else tuple(dict.fromkeys(features)),
            meters=None if meters is None else tuple(dict.fromkeys(meters)),
        )
        return KeyRing([*self._keys.values(), key]), NewKey(key, token)

    def find(self, ref: str) -> ApiKey:
        """The key whose id or (active) name is ``ref``."""
        key = self._keys.get(ref)
        if key is None:
            named = [k for k in self.active() if k.name == ref]
            key = named[0] if named else None
        if key is None:
            raise ConfigError(
                f"No API key {ref!r}",
                expected="a key id or the name of an active key (see `meterbox server keys list`)",
                found=repr(ref[:80]),
                hint="List the keys with `meterbox server keys list`",
            )
        return key

    def revoke(self, ref: str, now: datetime) -> tuple[KeyRing, ApiKey]:
        """A ring where the key named by id or name ``ref`` is revoked (idempotent)."""
        key = self.find(ref)
        if key.revoked_at is not None:
            return self, key
        revoked = replace(key, revoked_at=now)
        return KeyRing([revoked if k.key_id == key.key_id else k for k in self]), revoked

    # ---------------------------------------------------------------- storage
    def to_json(self) -> dict[str, Any]:
        return {"version": KEY_FILE_VERSION, "keys": [k.to_json() for k in self]}

    @classmethod
    def from_json(cls, doc: object) -> KeyRing:
        if not isinstance(doc, Mapping):
            raise _bad_file(f"a {type(doc).__name__}, not a JSON object")
        if doc.get("version") != KEY_FILE_VERSION:
            raise _bad_file(f"version {doc.get('version')!r}")
        keys = doc.get("keys")
        if not isinstance(keys, list):
            raise _bad_file("no list of keys")
        return cls(_key_from_json(k) for k in keys)


__all__ = ["ApiKey", "KeyRing", "NewKey", "digest"]
