"""The vendored Swagger UI and ReDoc files are the pinned ones, with their licences.

The files are fetched by scripts/fetch_api_docs_assets.py; this test fails if a
committed file drifts from MANIFEST.json, if the manifest drifts from the script's
pins, or if a file the server serves is missing from the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

from meterbox.server._apidocs import FILES

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src/meterbox/server/_apidocs"
ASSETS = PACKAGE / "assets"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fetch_api_docs_assets", ROOT / "scripts/fetch_api_docs_assets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_vendored_file_matches_its_manifest_entry() -> None:
    manifest = json.loads((ASSETS / "MANIFEST.json").read_text())
    on_disk = {p.name for p in ASSETS.iterdir()} - {"MANIFEST.json"}
    assert on_disk == set(manifest)
    for name, entry in manifest.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == entry["sha256"], name


def test_the_manifest_is_what_the_pinned_packages_give() -> None:
    script = _script()
    expected = {
        name: f"{package}@{version}:{member.removeprefix('package/')}"
        for package, version, _, members in script.PINS
        for member, name in members.items()
    }
    manifest = json.loads((ASSETS / "MANIFEST.json").read_text())
    assert {n: e["source"] for n, e in manifest.items()} == expected
    # Only the documented patches differ from upstream.
    assert {n for n, e in manifest.items() if "upstream_sha256" in e} == set(script.PATCHES)


def test_licences_ship_and_every_served_file_is_in_the_package() -> None:
    assert "Apache License" in (ASSETS / "swagger-ui-LICENSE").read_text()
    assert "MIT" in (ASSETS / "redoc-LICENSE").read_text()
    for name, (path, _) in FILES.items():
        assert (PACKAGE / path).is_file(), name
    # No CDN address is left in what the pages load.
    assert b"cdn.redoc.ly" not in (ASSETS / "redoc.standalone.js").read_bytes()
