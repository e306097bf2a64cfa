"""A throw-away PostgreSQL server for the test session.

``postgres_url`` (session scope) runs ``initdb`` into a temporary directory, starts
``postgres`` on a free TCP port of 127.0.0.1 with trust authentication and its unix
socket inside that directory, creates database ``meterbox`` and yields
``postgresql+psycopg://<user>@127.0.0.1:<port>/meterbox``. The server is stopped and
the directory removed when the session ends.

PostgreSQL refuses to run as root, so under root every server command runs as
``nobody`` through ``runuser``. Missing binaries fail the tests that need the server:
a database test that silently skips would hide a broken environment.

``fresh_postgres_url`` (function scope) hands each test its own empty database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

_BINARIES = ("initdb", "pg_ctl", "postgres")
_UNPRIVILEGED = "nobody"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _UNPRIVILEGED, "--", *argv]
    return argv


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"PostgreSQL test server: {what} failed (exit {proc.returncode}).\n"
            f"command: {' '.join(argv)}\nstdout: {proc.stdout}\nstderr: {proc.stderr}",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    missing = [b for b in _BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(
            "PostgreSQL test server: binaries not found on PATH: "
            + ", ".join(missing)
            + ". Expected initdb, pg_ctl and postgres (PostgreSQL 15+). "
            "Install them with scripts/install-system-deps.sh.",
            pytrace=False,
        )
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("PostgreSQL test server: running as root needs `runuser`.", pytrace=False)
    user = _UNPRIVILEGED if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    base = Path(tempfile.mkdtemp(prefix="meterbox-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        for path in (base, sock):
            shutil.chown(path, user=_UNPRIVILEGED)
    port = _free_port()
    started = False
    try:
        _run(
            ["initdb", "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8", "--no-sync"],
            "initdb",
        )
        options = (
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        _run(
            ["pg_ctl", "-D", str(data), "-l", str(base / "log"), "-o", options, "-w", "start"],
            "pg_ctl start (log in " + str(base / "log") + ")",
        )
        started = True
        with psycopg.connect(
            host="127.0.0.1", port=port, user=user, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute("CREATE DATABASE meterbox")
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/meterbox"
    finally:
        if started:
            subprocess.run(
                _as_server_user(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new, empty database on the session's server, dropped after the test."""
    base, _, _ = postgres_url.rpartition("/")
    name = "t_" + uuid.uuid4().hex[:16]
    conninfo = base.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # name is generated, never user input
    yield f"{base}/{name}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
