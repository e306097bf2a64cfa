"""Which modules each command line may import: the start-up cost guard of the CLI.

A timed test would be flaky on a shared machine; the import graph is what makes start-up
slow, and it is deterministic. Each scenario runs in a fresh interpreter (the modules a
test process already holds say nothing), runs the command, then lists ``sys.modules``.
Figures for the time itself are in docs/benchmarks.md (bench/cli_startup.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Imported by the server or the vendor toolkit only; never by the client or --help.
HEAVY = (
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "psycopg",
    "sklearn",
    "scipy",
    "numpy",
    "jinja2",
    "prometheus_client",
)
# typer validates parameters with pydantic, so only the library (no typer) avoids it.
LIBRARY_HEAVY = (*HEAVY, "pydantic", "typer", "rich")

_PROBE = """
import json, sys
out, argv = sys.argv[1], sys.argv[2:]
from meterbox.cli import main
sys.argv = ["meterbox", *argv]
try:
    main()
except SystemExit:
    pass
with open(out, "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def modules_after(tmp_path: Path, *argv: str) -> set[str]:
    out = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *argv],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return set(json.loads(out.read_text()))


def offenders(
    modules: set[str], roots: tuple[str, ...], prefixes: tuple[str, ...] = ()
) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in roots or m.startswith(prefixes))


@pytest.mark.parametrize("argv", [["--help"], ["--version"], []])
def test_root_help_and_version_import_no_role(tmp_path: Path, argv: list[str]) -> None:
    modules = modules_after(tmp_path, *argv)
    assert (
        offenders(
            modules,
            (*HEAVY, "httpx", "cryptography"),
            ("meterbox.client", "meterbox.server", "meterbox.vendorkit", "meterbox.ledger"),
        )
        == []
    )


@pytest.mark.parametrize("argv", [["client", "--help"], ["client", "record", "--help"]])
def test_client_help_imports_no_server_or_vendor_code(tmp_path: Path, argv: list[str]) -> None:
    modules = modules_after(tmp_path, *argv)
    assert "meterbox.client.cli" in modules
    assert (
        offenders(
            modules, HEAVY, ("meterbox.server", "meterbox.vendorkit", "meterbox.client._async")
        )
        == []
    )


def test_client_record_imports_only_the_blocking_client(tmp_path: Path) -> None:
    # Port 9 (discard) on loopback refuses at once: the record is spooled, exit 0.
    modules = modules_after(
        tmp_path,
        "client", "record", "solver-runs", "1", "--key", "k1",
        "--url", "http://127.0.0.1:9", "--spool", str(tmp_path / "spool.db"),
    )  # fmt: skip
    assert "meterbox.client._sync" in modules
    assert (
        offenders(
            modules,
            (*HEAVY, "asyncio"),
            ("meterbox.server", "meterbox.vendorkit", "meterbox.client._async"),
        )
        == []
    )


def test_vendor_help_imports_no_database_or_numerics(tmp_path: Path) -> None:
    modules = modules_after(tmp_path, "vendor", "--help")
    assert "meterbox.vendorkit.cli._bill" in modules
    assert offenders(modules, HEAVY, ("meterbox.server", "meterbox.client")) == []


def test_server_help_imports_no_web_framework(tmp_path: Path) -> None:
    modules = modules_after(tmp_path, "server", "--help")
    assert "meterbox.server.cli" in modules
    assert offenders(modules, HEAVY, ("meterbox.vendorkit", "meterbox.client")) == []


def test_client_library_import_is_lean() -> None:
    code = "import json, sys, meterbox.client; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    modules = set(json.loads(done.stdout))
    assert (
        offenders(
            modules,
            LIBRARY_HEAVY,
            ("meterbox.server", "meterbox.vendorkit", "meterbox.client._async"),
        )
        == []
    )


def test_client_names_resolve_lazily() -> None:
    import meterbox.client as client

    assert client.AsyncClient.__module__ == "meterbox.client._async"
    assert client.Client.__module__ == "meterbox.client._sync"
    with pytest.raises(AttributeError, match="NoSuchName"):
        _ = client.NoSuchName  # type: ignore[attr-defined]


def test_version_flag_prints_the_package_version() -> None:
    import meterbox

    done = subprocess.run(
        [sys.executable, "-m", "meterbox", "--version"], check=True, capture_output=True, text=True
    )
    assert done.stdout == f"meterbox {meterbox.__version__}\n"
