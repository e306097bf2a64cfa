"""HTTP hardening of `meterbox server run`: tokens, limits, timeouts, TLS, bind address, CORS.

Most tests start the real server as a subprocess on a free loopback port and talk to
it over real sockets; the constant-time check runs the app in-process to spy on
``hmac.compare_digest``.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.fuzz import Site, make_site


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    def __init__(self, site: Site, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.site, self.proc, self.url, self.log = site, proc, url, log
        self.port = int(url.rsplit(":", 1)[1])

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        return self.log.read_text(errors="replace")


def _start(
    site: Site, tmp: Path, *extra: str, scheme: str = "http", verify: ssl.SSLContext | None = None
) -> Running:
    port = _free_port()
    log = tmp / f"server-{port}.log"
    args = [sys.executable, "-m", "meterbox", "server", "run", "--data", str(site.data),
            "--port", str(port), *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    with log.open("wb") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"{scheme}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start: " + log.read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=1, verify=verify or False).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Running(site, proc, url, log)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("http")
    running = _start(make_site(tmp), tmp)
    yield running
    running.stop()


# ------------------------------------------------------------------ admin token
def test_admin_token_is_compared_with_hmac_compare_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hmac

    from starlette.testclient import TestClient

    from meterbox.server import _app as app_module
    from meterbox.server._runtime import build_server

    site = make_site(tmp_path)
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert app_module.hmac is hmac  # type: ignore[attr-defined]
    built = build_server(site.data)
    try:
        with TestClient(built.app) as client:
            bad = client.post("/v1/admin/export", headers={"Authorization": "Bearer x" * 3})
            good = client.post(
                "/v1/admin/export", headers={"Authorization": f"Bearer {site.admin_token}"}
            )
    finally:
        built.close()
    assert bad.status_code == 401 and good.status_code == 200
    assert (site.admin_token.encode(), site.admin_token.encode()) in calls
    assert len(calls) >= 2


def test_admin_token_never_appears_in_the_server_log(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    running = _start(site, tmp_path, "--log-level", "debug")
    wrong = "wrong-token-" + "z" * 30
    try:
        for token in (site.admin_token, wrong):
            for path in ("/v1/admin/export", "/v1/status", "/v1/admin/import"):
                httpx.post(f"{running.url}{path}", headers={"Authorization": f"Bearer {token}"},
                           content=b"junk", timeout=10)  # fmt: skip
    finally:
        log = running.stop()
    assert "/v1/admin/export" in log  # the access log is on, so the check means something
    assert site.admin_token not in log
    assert wrong not in log


# ------------------------------------------------------------------ size limits
def test_body_over_the_limit_is_413(server: Running) -> None:
    big = b"{" + b" " * (2 << 20) + b"}"
    r = httpx.post(f"{server.url}/v1/usage", content=big, timeout=30,
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"
    r = httpx.post(f"{server.url}/v1/admin/import", content=big, timeout=30,
                   headers={"Authorization": f"Bearer {server.site.admin_token}"})  # fmt: skip
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("size", "pause"), [(64 * 1024, 0.5), (1 << 20, 0.0)], ids=["64KiB-in-two-parts", "1MiB"]
)
def test_oversized_headers_are_refused(server: Running, size: int, pause: float) -> None:
    # The server bounds a header block it is still receiving (16 KiB): a large block
    # that arrives in parts, or one larger than a single read, is refused.
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        try:
            s.sendall(head)
            time.sleep(pause)
            s.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return  # refused by closing the connection
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:200]
    if reply:
        assert reply.split(b" ", 2)[1] in (b"400", b"431"), reply[:200]


def test_idle_connection_after_a_request_is_closed_by_keep_alive(server: Running) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - start < 20


def test_slow_client_sending_headers_byte_by_byte_is_disconnected(server: Running) -> None:
    # Slowloris: a client that never finishes its headers must not hold a connection
    # (one of limit_concurrency=1000) for ever. Bounded: 25 s at most.
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as s:
        start = time.monotonic()
        closed = False
        for byte in request:
            if time.monotonic() - start > 25:
                break
            try:
                s.sendall(bytes([byte]))
                s.settimeout(1.0)
                if s.recv(1024) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "the server kept a connection whose headers never finished for 25 s"


# ------------------------------------------------------------------ TLS
def _self_signed(tmp: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    cert, key = _self_signed(tmp_path)
    ctx = ssl.create_default_context(cafile=str(cert))
    running = _start(site, tmp_path, "--tls-cert", str(cert), "--tls-key", str(key),
                     scheme="https", verify=ctx)  # fmt: skip
    try:
        r = httpx.get(f"{running.url}/v1/status", verify=ctx, timeout=10)
        assert r.status_code == 200 and r.json()["instance_id"]
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{running.port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{running.url}/healthz", timeout=5)  # default trust store: refused
    finally:
        running.stop()


def test_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    cert, _ = _self_signed(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "meterbox", "server", "run", "--data", str(site.data),
         "--tls-cert", str(cert)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--tls-key" in proc.stderr


# ------------------------------------------------------------------ bind, CORS
def _listening_addresses(port: int) -> set[str]:
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if int(p, 16) == port and state == "0A":  # 0A: LISTEN
                out.add(addr)
    return out


def test_server_binds_to_loopback_by_default(server: Running) -> None:
    addresses = _listening_addresses(server.port)
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1, little-endian hex
    run_file = (server.site.data / "run.json").read_text()
    assert f"127.0.0.1:{server.port}" in run_file


def test_no_cors_headers_and_no_preflight(server: Running) -> None:
    origin = {"Origin": "https://evil.example"}
    for method, path in (("GET", "/v1/status"), ("POST", "/v1/usage"), ("GET", "/healthz")):
        r = httpx.request(method, f"{server.url}{path}", headers=origin, json={}, timeout=10)
        assert not any(h.lower().startswith("access-control-") for h in r.headers), r.headers
    pre = httpx.options(
        f"{server.url}/v1/admin/export",
        headers={**origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
        timeout=10,
    )  # fmt: skip
    assert pre.status_code >= 400
    assert not any(h.lower().startswith("access-control-") for h in pre.headers)
