"""Vectors of docs/spec/borrow.md: borrow tokens that verify, and ones that must not.

Run from ``tests/`` as ``python -m vectors.borrow.generate``. Fixed keys (Ed25519 from
fixed seeds) and a fixed clock. Writes ``instance.pub`` (the instance key, raw Ed25519
in base64), ``valid/*.borrow`` and ``invalid/*.borrow``, and ``manifest.json``: for each
file the machine code and time to verify at, and the payload (valid) or the error class
(invalid).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meterbox import crypto
from meterbox.licenses import BorrowToken, DocumentSigner, instance_key_id, machine_digest
from meterbox.licenses._envelope import seal

HERE = Path(__file__).resolve().parent
CLOCK = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)
MACHINE = "laptop-7f3a"
OTHER_MACHINE = "desktop-22b1"


def _signer(seed: int) -> DocumentSigner:
    key = Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    return DocumentSigner(instance_key_id(crypto.ed25519_raw_public(key.public_key())), key)


INSTANCE = _signer(7)
STRANGER = _signer(8)


def _at(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def build() -> dict[str, bytes]:
    token = BorrowToken(
        lease_id="u3Vv0l1Q2xj0aZ8c6Hq-Pw",
        feature="cad",
        license_id="lic_00112233445566aa",
        client_id="alice@laptop-7f3a",
        instance_id="866d3e23bfcffe24a39858c1a79893bf",
        machine=machine_digest(MACHINE),
        issued=CLOCK,
        expires=CLOCK + timedelta(days=14),
    )
    longest = BorrowToken(
        **{
            **token.__dict__,
            "lease_id": "_leading-underscore",
            "expires": CLOCK + timedelta(days=366),
        }
    )
    good = token.sign(INSTANCE)
    files: dict[str, bytes] = {}
    manifest: dict[str, list[dict[str, Any]]] = {"valid": [], "invalid": []}
    inside = CLOCK + timedelta(days=3)
    for name, t, at in (
        ("valid/two-weeks.borrow", token, inside),
        ("valid/last-second.borrow", token, token.expires - timedelta(seconds=1)),
        ("valid/issued-clock-behind.borrow", token, CLOCK - timedelta(minutes=4)),
        ("valid/longest.borrow", longest, inside),
    ):
        files[name] = t.sign(INSTANCE)
        manifest["valid"].append(
            {"file": name, "machine_code": MACHINE, "now": _at(at), "payload": t.to_payload()}
        )
    flipped = bytearray(good)
    at = good.index(b'"signature":"') + len(b'"signature":"') + 7
    flipped[at] = ord("A") if flipped[at] != ord("A") else ord("B")
    payload = token.to_payload()
    invalid: list[tuple[str, bytes, str, datetime, str]] = [
        ("invalid/expired.borrow", good, MACHINE, token.expires, "LicenseExpired"),
        ("invalid/other-machine.borrow", good, OTHER_MACHINE, inside, "VerificationError"),
        ("invalid/bad-signature.borrow", bytes(flipped), MACHINE, inside, "VerificationError"),
        ("invalid/other-server.borrow", token.sign(STRANGER), MACHINE, inside, "VerificationError"),
        (
            "invalid/clock-far-behind.borrow",
            good,
            MACHINE,
            CLOCK - timedelta(minutes=6),
            "VerificationError",
        ),
        (
            "invalid/unknown-version.borrow",
            seal("meterbox-borrow/2", payload, INSTANCE),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/license-not-borrow.borrow",
            seal("meterbox-license/1", payload, INSTANCE),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/unknown-field.borrow",
            seal("meterbox-borrow/1", {**payload, "seats": 2}, INSTANCE),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/too-long.borrow",
            seal(
                "meterbox-borrow/1",
                {**payload, "expires": _at(CLOCK + timedelta(days=366, seconds=1))},
                INSTANCE,
            ),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/expires-before-issued.borrow",
            seal("meterbox-borrow/1", {**payload, "expires": _at(CLOCK)}, INSTANCE),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/machine-code-in-clear.borrow",
            seal("meterbox-borrow/1", {**payload, "machine": MACHINE}, INSTANCE),
            MACHINE,
            inside,
            "FormatError",
        ),
        (
            "invalid/reformatted.borrow",
            good.replace(b'","', b'", "', 1),
            MACHINE,
            inside,
            "FormatError",
        ),
        ("invalid/truncated.borrow", good[: len(good) // 2], MACHINE, inside, "FormatError"),
    ]
    for name, data, code, when, error in invalid:
        files[name] = data
        manifest["invalid"].append(
            {"file": name, "machine_code": code, "now": _at(when), "error": error}
        )
    files["instance.pub"] = (
        crypto.b64e(crypto.ed25519_raw_public(INSTANCE.private_key.public_key())) + "\n"
    ).encode()
    files["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return files


def write(out: Path) -> None:
    for name, data in build().items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE)
    write(parser.parse_args().out)


if __name__ == "__main__":
    main()
