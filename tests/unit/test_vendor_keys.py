"""Vendor key files: private by construction, never overwritten, rotation keeps old keys."""

from __future__ import annotations

import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterbox import crypto
from meterbox.clock import ManualClock
from meterbox.errors import StateError, VerificationError
from meterbox.licenses import Topup, VendorPublicBundle
from meterbox.vendorkit import keys

CLOCK = datetime(2025, 1, 1, tzinfo=UTC)


def test_init_writes_private_key_0600_and_public_bundle(tmp_path: Path) -> None:
    home = tmp_path / "vendor"
    made = keys.init(home, clock=ManualClock(wall_ms=int(CLOCK.timestamp() * 1000)))
    key_file = home / "keys" / f"{made.current_id.hex()}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    bundle = VendorPublicBundle.from_bytes((home / "vendor.pub").read_bytes())
    assert bundle == made.bundle
    assert bundle.current.created == CLOCK
    pub = bundle.current
    assert pub.key_id == crypto.key_id(pub.sign_public + pub.ledger_public)
    assert b"private" not in (home / "vendor.pub").read_bytes()


def test_init_refuses_to_overwrite_existing_keys(tmp_path: Path) -> None:
    keys.init(tmp_path)
    before = (tmp_path / "vendor.pub").read_bytes()
    with pytest.raises(StateError, match="already exist") as info:
        keys.init(tmp_path)
    assert "rotate-key" in (info.value.hint or "")
    assert (tmp_path / "vendor.pub").read_bytes() == before


def test_rotate_adds_current_key_and_old_documents_still_verify(tmp_path: Path) -> None:
    first = keys.init(tmp_path)
    old_doc = Topup("top_1", "lic_1", "runs", 3, CLOCK).sign(first.signer())
    rotated = keys.rotate(tmp_path)
    assert rotated.current_id != first.current_id
    assert [k.key_id for k in rotated.bundle.keys] == [first.current_id, rotated.current_id]
    loaded = keys.VendorKeys.load(tmp_path)
    assert loaded.bundle == rotated.bundle
    assert Topup.from_bytes(old_doc, loaded.bundle).units == 3
    # The old ledger key is still there, so reports sealed to it still open.
    assert crypto.x25519_raw_private(loaded.ledger_private(first.current_id)) == (
        crypto.x25519_raw_private(first.ledger_private(first.current_id))
    )
    new_doc = Topup("top_2", "lic_1", "runs", 4, CLOCK).sign(loaded.signer())
    assert json.loads(new_doc)["key_id"] == rotated.current_id.hex()


def test_load_refuses_world_readable_private_key(tmp_path: Path) -> None:
    made = keys.init(tmp_path)
    key_file = tmp_path / "keys" / f"{made.current_id.hex()}.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(StateError, match="readable by other users") as info:
        keys.VendorKeys.load(tmp_path)
    assert "chmod 600" in (info.value.hint or "")


def test_load_without_init_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="no vendor keys") as info:
        keys.VendorKeys.load(tmp_path)
    assert "meterbox vendor init" in (info.value.hint or "")


def test_load_detects_missing_private_key(tmp_path: Path) -> None:
    made = keys.init(tmp_path)
    (tmp_path / "keys" / f"{made.current_id.hex()}.key").unlink()
    with pytest.raises(StateError, match="no private key file"):
        keys.VendorKeys.load(tmp_path)


def test_unknown_key_id_is_a_verification_error(tmp_path: Path) -> None:
    made = keys.init(tmp_path)
    with pytest.raises(VerificationError, match="does not hold"):
        made.signer(b"\x00" * 8)


def test_write_new_file_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "f"
    keys.write_new_file(target, b"one")
    with pytest.raises(StateError, match="overwrite"):
        keys.write_new_file(target, b"two")
    assert target.read_bytes() == b"one"


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    keys.atomic_write(target, b"old")
    keys.atomic_write(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_private_key_file_round_trips() -> None:
    pair = keys.VendorKeyPair.from_raw(b"\x07" * 32, b"\x08" * 32, CLOCK)
    again = keys.VendorKeyPair.from_private_bytes(pair.to_private_bytes(), "key file")
    assert again.public == pair.public
