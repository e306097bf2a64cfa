"""Site API keys, the pure ring: creation, authentication, scopes, revocation, the file format."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterbox.errors import ConfigError, ForbiddenError, StateError, UnauthorizedError
from meterbox.server._core.access import KeyRing, digest

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def fixed_rng(seed: int = 7) -> Callable[[int], bytes]:
    """Deterministic randomness, so every run makes the same keys."""
    return random.Random(seed).randbytes


def ring_with(*names: str, seed: int = 7) -> tuple[KeyRing, dict[str, str]]:
    ring, tokens = KeyRing(), {}
    rng = fixed_rng(seed)
    for name in names:
        ring, new = ring.create(name, T0, rng)
        tokens[name] = new.token
    return ring, tokens


def test_a_created_key_authenticates_and_only_its_digest_is_stored() -> None:
    ring, tokens = ring_with("lab-1", "lab-2")
    key = ring.authenticate(tokens["lab-1"])
    assert key.name == "lab-1" and key.digest == digest(tokens["lab-1"])
    text = json.dumps(ring.to_json())
    assert tokens["lab-1"] not in text and tokens["lab-1"].split(".")[1] not in text


def test_revocation_is_immediate_and_idempotent_and_ids_are_not_reused() -> None:
    ring, tokens = ring_with("lab-1")
    revoked_ring, key = ring.revoke("lab-1", T0 + timedelta(hours=1))
    with pytest.raises(UnauthorizedError, match="was revoked"):
        revoked_ring.authenticate(tokens["lab-1"])
    assert ring.authenticate(tokens["lab-1"]).name == "lab-1"  # the old ring is unchanged
    again, same = revoked_ring.revoke(key.key_id, T0 + timedelta(hours=2))
    assert again is revoked_ring and same.revoked_at == T0 + timedelta(hours=1)
    # A new key of the same name is allowed once the old one is revoked, with a new id.
    newer, new = revoked_ring.create("lab-1", T0, fixed_rng(99))
    assert new.key.key_id != key.key_id and len(newer) == 2


def test_scopes_allow_exactly_the_named_features_and_meters() -> None:
    ring, new = KeyRing().create(
        "cad-only",
        T0,
        fixed_rng(),
        group="cfd",
        features=["cad", "cad"],
        meters=[],
    )
    key = ring.authenticate(new.token)
    key.allow_feature("cad")
    with pytest.raises(ForbiddenError, match="may not check out feature 'cam'"):
        key.allow_feature("cam")
    with pytest.raises(ForbiddenError, match="may not record usage on meter 'runs'"):
        key.allow_meter("runs")
    assert key.features == ("cad",) and key.group == "cfd"


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "not in the form"),
        ("Bearer abc", "not in the form"),
        ("mbk_0000000g." + "A" * 43, "not in the form"),
        ("mbk_00000000." + "A" * 43, "not known"),
    ],
)
def test_malformed_and_unknown_tokens_are_refused_without_echoing_them(
    token: str, message: str
) -> None:
    ring, _ = ring_with("lab-1")
    with pytest.raises(UnauthorizedError, match=message) as caught:
        ring.authenticate(token)
    if token:
        assert token not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), flip=st.integers(0, 42), char=st.sampled_from("AQgw-_09"))
def test_a_token_changed_in_any_secret_character_never_authenticates(
    seed: int, flip: int, char: str
) -> None:
    ring, tokens = ring_with("k", seed=seed)
    token = tokens["k"]
    prefix, secret = token.split(".")
    if secret[flip] == char:
        return
    forged = f"{prefix}.{secret[:flip]}{char}{secret[flip + 1 :]}"
    with pytest.raises(UnauthorizedError):
        ring.authenticate(forged)


names = st.from_regex(r"[a-z][a-z0-9._@-]{0,20}", fullmatch=True)
scopes = st.none() | st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True), max_size=4)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(
        st.tuples(names, st.none() | names, scopes, scopes, st.booleans()), max_size=6
    ),
    seed=st.integers(0, 2**32),
)
def test_the_key_file_round_trips(
    entries: list[tuple[str, str | None, list[str] | None, list[str] | None, bool]], seed: int
) -> None:
    ring = KeyRing()
    rng = fixed_rng(seed)
    for name, group, features, meters, revoke in entries:
        if any(k.name == name for k in ring.active()):
            continue
        ring, new = ring.create(name, T0, rng, group=group, features=features, meters=meters)
        if revoke:
            ring, _ = ring.revoke(new.key.key_id, T0 + timedelta(days=1))
    doc = json.loads(json.dumps(ring.to_json()))
    again = KeyRing.from_json(doc)
    assert [k.to_json() for k in again] == [k.to_json() for k in ring]


@pytest.mark.parametrize(
    ("doc", "found"),
    [
        ([], "not a JSON object"),
        ({"version": 2, "keys": []}, "version 2"),
        ({"version": 1}, "no list of keys"),
        ({"version": 1, "keys": [{"key_id": "zz"}]}, "without a text 'name'"),
        (
            {
                "version": 1,
                "keys": [
                    {"key_id": "0a0b0c0d", "name": "x", "digest": "00" * 32, "created_at": "y"}
                ],
            },
            "not an ISO-8601 time",
        ),
    ],
)
def test_a_damaged_key_file_is_a_clear_state_error(doc: object, found: str) -> None:
    with pytest.raises(StateError, match=found) as caught:
        KeyRing.from_json(doc)
    assert "api-keys.json" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "what"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "ok", "group": ""}, "group"),
        ({"name": "ok", "features": ["a,b"]}, "feature"),
    ],
)
def test_unusable_names_are_refused_before_anything_is_created(
    kwargs: dict[str, object], what: str
) -> None:
    with pytest.raises(ConfigError, match=f"key's {what} is not usable"):
        KeyRing().create(now=T0, rng=fixed_rng(), **kwargs)
    ring, _ = ring_with("dup")
    with pytest.raises(ConfigError, match="already named 'dup'"):
        ring.create("dup", T0, fixed_rng(3))
