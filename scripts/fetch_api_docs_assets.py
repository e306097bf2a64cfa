"""Fetch the Swagger UI and ReDoc files that the server's /docs and /redoc serve.

The files are committed under ``src/meterbox/server/_apidocs/assets/`` so that the API
documentation works on a host with no network; this script is how they got there and
how they are updated. It runs ``npm pack`` for each pinned package, checks the
tarball against the pinned npm integrity (sha512), copies only the listed files (with
their licence files) byte for byte except for the patches in :data:`PATCHES`, and
writes ``MANIFEST.json`` with each file's sha256 (and the upstream sha256 of a
patched file). ``tests/unit/test_api_docs_assets.py`` checks the committed files against
that manifest and the manifest against the pins below.

Usage: python scripts/fetch_api_docs_assets.py   (needs npm and the npm registry)
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "meterbox" / "server" / "_apidocs" / "assets"

#: (package, version, npm integrity of its tarball, {file in the tarball: asset name}).
PINS: list[tuple[str, str, str, dict[str, str]]] = [
    (
        "swagger-ui-dist",
        "5.35.0",
        "sha512-U06rpMtW9V3XPGOBeamTUSr0Z09jMX4IJuANpE/EZbAhw0G8CgwrzU4YmXkn/h0wCDNsXdGarTNNHC3sU8yVUQ==",
        {
            "package/swagger-ui-bundle.js": "swagger-ui-bundle.js",
            "package/swagger-ui.css": "swagger-ui.css",
            "package/LICENSE": "swagger-ui-LICENSE",
            "package/NOTICE": "swagger-ui-NOTICE",
            "package/swagger-ui-bundle.js.LICENSE.txt": "swagger-ui-bundle.js.LICENSE.txt",
        },
    ),
    (
        # ReDoc 2, not 3: the 3.0 bundle sends telemetry to its maker and loads its logo
        # from a CDN, neither of which can be turned off for the logo.
        "redoc",
        "2.5.4",
        "sha512-M6jWhG1qoBnH6TFmzJnstyCZ87HmOY/UzDm78mHiYihEdlV/YcS9ogOo1NlElnJMeLsyxHFe2yFc4sNjHTrABQ==",
        {
            "package/bundles/redoc.standalone.js": "redoc.standalone.js",
            "package/LICENSE": "redoc-LICENSE",
            "package/bundles/redoc.standalone.js.LICENSE.txt": "redoc.standalone.js.LICENSE.txt",
        },
    ),
]


#: Exact replacements, each of which must occur exactly once in its file. ReDoc draws
#: its maker's logo from a CDN in the sidebar, unconditionally; on a host with no network
#: that is a blocked request on every page load. ``data:,`` is no image, so ReDoc's own
#: error handler hides the logo; the "API docs by Redocly" attribution text stays.
PATCHES: dict[str, list[tuple[bytes, bytes]]] = {
    "redoc.standalone.js": [(b'src:"https://cdn.redoc.ly/redoc/logo-mini.svg"', b'src:"data:,"')],
}


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch() -> dict[str, dict[str, str]]:
    manifest: dict[str, dict[str, str]] = {}
    ASSETS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for package, version, integrity, files in PINS:
            spec = f"{package}@{version}"
            out = subprocess.run(
                ["npm", "pack", "--silent", "--pack-destination", tmp, spec],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()[-1]
            tarball = Path(tmp) / out
            data = tarball.read_bytes()
            if _integrity(data) != integrity:
                sys.exit(f"{spec}: integrity {_integrity(data)} is not the pinned {integrity}")
            with tarfile.open(tarball) as tar:
                for member, name in files.items():
                    extracted = tar.extractfile(member)
                    if extracted is None:
                        sys.exit(f"{spec}: {member} is not a file in the tarball")
                    upstream = extracted.read()
                    body = upstream
                    for old, new in PATCHES.get(name, []):
                        if body.count(old) != 1:
                            sys.exit(f"{spec}: {old!r} is not in {member} exactly once")
                        body = body.replace(old, new)
                    (ASSETS / name).write_bytes(body)
                    manifest[name] = {
                        "source": f"{spec}:{member.removeprefix('package/')}",
                        "sha256": hashlib.sha256(body).hexdigest(),
                    }
                    if body != upstream:
                        manifest[name]["upstream_sha256"] = hashlib.sha256(upstream).hexdigest()
                    print(f"{name:36} {len(body):>9} bytes  from {spec}")
    (ASSETS / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


if __name__ == "__main__":
    fetch()
