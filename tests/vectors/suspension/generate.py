"""Generate the license notice test vectors in tests/vectors/suspension/.

Fixed keys (the licenses set's vendor key A) and a fixed clock make every byte
reproducible; tests/unit/test_suspension_vectors.py builds the vectors afresh and
compares them byte for byte with the checked-in files. Besides signed notices
(``valid/``, ``invalid/``) the set holds ``apply.json``: sequences of notices imported
in order, with what the site must do with each (docs/spec/suspension.md, "Apply").

Usage, from ``tests/`` (``make vectors`` regenerates every vector set):
``python -m vectors.suspension.generate [--out DIR]`` (default: this directory).
"""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

from meterbox.licenses import LicenseNotice, Topup, VendorPublicBundle
from meterbox.licenses._envelope import seal
from vectors.licenses.generate import CLOCK, KEY_A, KEY_STRANGER

HERE = Path(__file__).resolve().parent
LICENSE_ID = "lic_00112233445566aa"
FORMAT = "meterbox-license-notice/1"


def _json(value: object) -> bytes:
    return json.dumps(value, indent=2, sort_keys=True).encode() + b"\n"


def _notice(n: int, action: str, reason: str | None = None) -> LicenseNotice:
    return LicenseNotice(
        notice_id=f"ntc_00112233445566{n:02x}",
        license_id=LICENSE_ID,
        action=action,  # type: ignore[arg-type]
        sequence=n,
        issued=CLOCK + timedelta(days=n),
        reason=reason,
    )


#: Import orders and the expected outcome of each import, then the final standing.
#: ``applied``: the standing changes to the notice's; ``out_of_order``: the notice is
#: not newer than the last applied (nothing changes); ``revoked``: after a revocation.
APPLY_CASES = [
    {
        "name": "suspend then resume",
        "imports": [[1, "suspend", "applied"], [2, "resume", "applied"]],
        "final": "active",
    },
    {
        "name": "an old suspend replayed after the resume changes nothing",
        "imports": [
            [1, "suspend", "applied"],
            [2, "resume", "applied"],
            [1, "suspend", "out_of_order"],
        ],
        "final": "active",
    },
    {
        "name": "a resume that arrives before a later suspend is ignored",
        "imports": [[3, "suspend", "applied"], [2, "resume", "out_of_order"]],
        "final": "suspended",
    },
    {
        "name": "the same notice imported twice counts once",
        "imports": [[1, "suspend", "applied"], [1, "suspend", "out_of_order"]],
        "final": "suspended",
    },
    {
        "name": "gaps in the sequence are allowed",
        "imports": [[5, "suspend", "applied"], [9, "resume", "applied"]],
        "final": "active",
    },
    {
        "name": "revocation is final",
        "imports": [[1, "revoke", "applied"], [2, "resume", "revoked"], [3, "suspend", "revoked"]],
        "final": "revoked",
    },
    {
        "name": "a suspension may be followed by a revocation",
        "imports": [[1, "suspend", "applied"], [2, "revoke", "applied"]],
        "final": "revoked",
    },
]


def build() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    manifest: dict[str, list[dict[str, object]]] = {"valid": [], "invalid": []}
    suspend = _notice(1, "suspend", "invoice 2025-014 unpaid")
    resume = _notice(2, "resume")
    revoke = _notice(3, "revoke", "contract ended")
    for name, notice in (
        ("valid/suspend.ntc", suspend),
        ("valid/resume.ntc", resume),
        ("valid/revoke.ntc", revoke),
    ):
        files[name] = notice.sign(KEY_A.signer())
        manifest["valid"].append({"file": name, "payload": notice.to_payload()})
    good = files["valid/suspend.ntc"]
    flipped = bytearray(good)
    at = good.index(b'"signature":"') + len(b'"signature":"') + 5
    flipped[at] = ord("A") if flipped[at] != ord("A") else ord("B")
    payload = suspend.to_payload()
    topup = Topup("top_00112233445566cc", LICENSE_ID, "solver-runs", 500, CLOCK)
    invalid = [
        ("invalid/bad-signature.ntc", bytes(flipped), "VerificationError"),
        ("invalid/wrong-key.ntc", suspend.sign(KEY_STRANGER.signer()), "VerificationError"),
        (
            "invalid/unknown-version.ntc",
            seal("meterbox-license-notice/2", payload, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/unknown-action.ntc",
            seal(FORMAT, {**payload, "action": "pause"}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/zero-sequence.ntc",
            seal(FORMAT, {**payload, "sequence": 0}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/sequence-as-string.ntc",
            seal(FORMAT, {**payload, "sequence": "1"}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/unknown-field.ntc",
            seal(FORMAT, {**payload, "until": "2025-02-01T00:00:00Z"}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/missing-license.ntc",
            seal(FORMAT, {k: v for k, v in payload.items() if k != "license_id"}, KEY_A.signer()),
            "FormatError",
        ),
        (
            "invalid/control-in-reason.ntc",
            seal(FORMAT, {**payload, "reason": "unpaid\n<script>"}, KEY_A.signer()),
            "FormatError",
        ),
        ("invalid/topup-as-notice.ntc", topup.sign(KEY_A.signer()), "FormatError"),
        ("invalid/truncated.ntc", good[: len(good) // 2], "FormatError"),
    ]
    for name, data, error in invalid:
        files[name] = data
        manifest["invalid"].append({"file": name, "error": error})
    files["vendor.pub"] = VendorPublicBundle((KEY_A.public,), KEY_A.key_id).to_bytes()
    files["manifest.json"] = _json(manifest)
    files["apply.json"] = _json({"license_id": LICENSE_ID, "cases": APPLY_CASES})
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
