"""Air-gapped installs: a wheelhouse built by scripts/wheelhouse.sh (what `make
wheelhouse` runs), installed into a fresh virtual environment with no package index.

Building the wheelhouse needs the package index once, as on the vendor's build host;
the installs then run with ``--no-index``, ``PIP_NO_INDEX=1``, no pip configuration and
every proxy pointed at a closed loopback port, so any attempt to reach a network fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support.server_proc import free_port, make_data

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


def _run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result.stdout


def _offline_venv(tmp_path: Path, extras: str) -> Path:
    """A wheelhouse for ``extras``, and a fresh venv with meterbox[extras] from it alone."""
    wheels = tmp_path / "wheelhouse"
    env = {**os.environ, "PYTHON": sys.executable}
    _run("bash", ROOT / "scripts" / "wheelhouse.sh", wheels, extras, env=env)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    spec = f"meterbox[{extras}]" if extras else "meterbox"
    _run(
        venv / "bin" / "pip", "install", "--no-index", "--find-links", wheels, spec,
        env={**clean, **OFFLINE},
    )  # fmt: skip
    return venv


def _installed(venv: Path) -> set[str]:
    out = _run(venv / "bin" / "pip", "list", "--format", "json", env={**os.environ, **OFFLINE})
    return {p["name"].lower() for p in json.loads(out)}


def test_client_installs_offline_and_stays_lean(tmp_path: Path) -> None:
    venv = _offline_venv(tmp_path, "")
    bin_ = venv / "bin"
    assert _run(bin_ / "meterbox", "--version").strip() == "meterbox 0.1.0"
    _run(bin_ / "python", "-c", "from meterbox.client import Client; Client")
    installed = _installed(venv)
    assert {"meterbox", "httpx", "typer"} <= installed
    heavy = {"scikit-learn", "scipy", "numpy", "fastapi", "uvicorn", "sqlalchemy",
             "cryptography", "psycopg", "psycopg-binary"}  # fmt: skip
    assert not heavy & installed, heavy & installed
    # A server command on a client-only host names the extra instead of a traceback.
    result = subprocess.run(
        [bin_ / "meterbox", "server", "status", "--data", tmp_path / "none"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 4, result.stderr
    assert "pip install 'meterbox[server]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_installs_offline_and_serves(tmp_path: Path) -> None:
    venv = _offline_venv(tmp_path, "server")
    assert "scikit-learn" not in _installed(venv)
    site = make_data(tmp_path)  # vendor keys, a signed license, `server init`
    port = free_port()
    proc = subprocess.Popen(
        [venv / "bin" / "meterbox", "server", "run", "--data", site.data, "--port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            subprocess.run(["sleep", "0.1"], check=True)
        assert httpx.get(url + "/healthz", timeout=5).json() == {"ok": True}
        assert "meterbox_build_info" in httpx.get(url + "/metrics", timeout=5).text
        # The API docs' files come from the installed wheel.
        assert httpx.get(url + "/docs/assets/swagger-ui-bundle.js", timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
