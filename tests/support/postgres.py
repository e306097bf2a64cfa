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
:class:`PostgresServer` is the same server without pytest, for bench scripts.
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


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or a server command failed."""


def _run(argv: list[str], what: str) -> None:
    proc = subprocess.run(_as_server_user(argv), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PostgresUnavailable(
            f"PostgreSQL test server: {what} failed (exit {proc.returncode}).\n"
            f"command: {' '.join(argv)}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )


class PostgresServer:
    """One throw-away server: ``start()`` returns its URL, ``stop()`` removes it all.

    No pytest dependency, so bench scripts (bench/ingest_1m.py) start the same server the
    tests do.
    """

    def __init__(self) -> None:
        self.base: Path | None = None
        self._data: Path | None = None
        self.url = ""

    def start(self) -> str:
        missing = [b for b in _BINARIES if shutil.which(b) is None]
        if missing:
            raise PostgresUnavailable(
                "PostgreSQL test server: binaries not found on PATH: "
                + ", ".join(missing)
                + ". Expected initdb, pg_ctl and postgres (PostgreSQL 15+). "
                "Install them with scripts/install-system-deps.sh."
            )
        if os.geteuid() == 0 and shutil.which("runuser") is None:
            raise PostgresUnavailable("PostgreSQL test server: running as root needs `runuser`.")
        user = _UNPRIVILEGED if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        self.base = base = Path(tempfile.mkdtemp(prefix="meterbox-pg-"))
        data, sock = base / "data", base / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            for path in (base, sock):
                shutil.chown(path, user=_UNPRIVILEGED)
        port = _free_port()
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
            self._data = data
            with psycopg.connect(
                host="127.0.0.1", port=port, user=user, dbname="postgres", autocommit=True
            ) as conn:
                conn.execute("CREATE DATABASE meterbox")
        except BaseException:
            self.stop()
            raise
        self.url = f"postgresql+psycopg://{user}@127.0.0.1:{port}/meterbox"
        return self.url

    def stop(self) -> None:
        if self._data is not None:
            subprocess.run(
                _as_server_user(["pg_ctl", "-D", str(self._data), "-m", "fast", "-w", "stop"]),
                capture_output=True,
                check=False,
            )
            self._data = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    server = PostgresServer()
    try:
        url = server.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield url
    finally:
        server.stop()


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
