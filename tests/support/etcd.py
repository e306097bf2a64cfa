"""A real three-member etcd cluster on loopback for the cluster tests.

``etcd_cluster`` (function scope) starts three ``/usr/bin/etcd`` processes (Debian
``etcd-server`` 3.4) on free 127.0.0.1 ports, data directories under the test's
``tmp_path``, waits until every member answers ``/health`` and a write commits, and
yields an :class:`EtcdCluster`. Teardown kills every member (SIGCONT first, so a paused
member dies too) and waits for it.

Failure drills act on one member at a time: :meth:`EtcdCluster.kill` (SIGKILL),
:meth:`EtcdCluster.pause` / :meth:`EtcdCluster.resume` (SIGSTOP / SIGCONT, a member that
stops answering without closing its sockets, which is what a partition looks like to a
client), and :meth:`EtcdCluster.restart` (same data directory, same ports).

``etcd_tls_cluster`` is the same cluster with TLS on its client URLs and
``--client-cert-auth``: :class:`Pki` (made in the test with ``cryptography``) holds a
CA, one server certificate per member (SAN 127.0.0.1 and localhost) and a client
certificate; the peers keep plain HTTP on loopback. ``EtcdCluster.tls`` is then set
and the members' client URLs are ``https://``.

A missing binary fails the test that needs it: a cluster test that silently skips would
hide a broken environment. Install it with scripts/install-system-deps.sh.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ETCD_BINARY = os.environ.get("METERBOX_TEST_ETCD", "/usr/bin/etcd")
MEMBERS = 3
_START_TIMEOUT_S = 30.0
_CLUSTER_TOKEN = "meterbox-test"


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; held open together so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass(frozen=True)
class Pki:
    """A test CA under ``base`` and the certificates it signs (PEM files)."""

    base: Path
    ca_key: ec.EllipticCurvePrivateKey

    @property
    def ca(self) -> Path:
        return self.base / "ca.pem"

    @classmethod
    def create(cls, base: Path, name: str = "meterbox test etcd CA") -> Pki:
        base.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        pki = cls(base, key)
        pki.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return pki

    def issue(
        self, name: str, *, server: bool, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")
    ) -> tuple[Path, Path]:
        """(certificate, key) files for ``name``: a server (SANs ``hosts``) or a client.

        A server certificate carries clientAuth too: etcd 3.4's gateway dials its own
        gRPC port with it when --client-cert-auth is on.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        ca = x509.load_pem_x509_certificate(self.ca.read_bytes())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        sans: list[x509.GeneralName] = []
        for h in hosts if server else ():
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.ca_key, hashes.SHA256())
        cert_path, key_path = self.base / f"{name}.pem", self.base / f"{name}-key.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path


@dataclass(frozen=True)
class EtcdTls:
    """The TLS files of a cluster: its CA, the members' certificates, one client's."""

    pki: Pki
    member_certs: dict[str, tuple[Path, Path]]
    client_cert: Path
    client_key: Path

    @property
    def ca(self) -> Path:
        return self.pki.ca

    @classmethod
    def create(cls, base: Path, names: list[str]) -> EtcdTls:
        pki = Pki.create(base)
        members = {n: pki.issue(n, server=True) for n in names}
        cert, key = pki.issue("meterbox-node", server=False)
        return cls(pki, members, cert, key)

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx


@dataclass
class EtcdMember:
    """One etcd process: its name, ports, data directory and log."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    tls: EtcdTls | None = None

    @property
    def client_url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` as written in ``--cluster etcd://...``."""
        return f"127.0.0.1:{self.client_port}"

    def healthy(self, timeout: float = 1.0) -> bool:
        context = self.tls.ssl_context() if self.tls else None
        try:
            with urllib.request.urlopen(
                self.client_url + "/health", timeout=timeout, context=context
            ) as r:
                body = json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"


@dataclass
class EtcdCluster:
    """Three etcd members on loopback; see the module docstring."""

    base: Path
    members: list[EtcdMember] = field(default_factory=list)
    #: Set for a cluster with TLS and client-certificate auth on its client URLs.
    tls: EtcdTls | None = None

    @classmethod
    def create(cls, base: Path, size: int = MEMBERS, *, tls: bool = False) -> EtcdCluster:
        ports = _free_ports(2 * size)
        names = [f"etcd{i}" for i in range(size)]
        cluster = cls(base=base, tls=EtcdTls.create(base / "pki", names) if tls else None)
        for i, name in enumerate(names):
            cluster.members.append(
                EtcdMember(
                    name=name,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=base / name,
                    log_path=base / f"{name}.log",
                    tls=cluster.tls,
                )
            )
        return cluster

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def cluster_url(self) -> str:
        """The ``--cluster`` value a meterbox node takes: ``etcd[s]://h1:p1,h2:p2,h3:p3``."""
        return ("etcds://" if self.tls else "etcd://") + ",".join(self.endpoints)

    def _argv(self, m: EtcdMember, state: str) -> list[str]:
        tls: list[str] = []
        if self.tls is not None:
            cert, key = self.tls.member_certs[m.name]
            tls = ["--cert-file", str(cert), "--key-file", str(key),
                   "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]  # fmt: skip
        return [
            ETCD_BINARY,
            "--name",
            m.name,
            "--data-dir",
            str(m.data_dir),
            "--listen-client-urls",
            m.client_url,
            "--advertise-client-urls",
            m.client_url,
            "--listen-peer-urls",
            m.peer_url,
            "--initial-advertise-peer-urls",
            m.peer_url,
            "--initial-cluster",
            self.initial_cluster,
            "--initial-cluster-token",
            _CLUSTER_TOKEN,
            "--initial-cluster-state",
            state,
            # Fast elections keep the failure drills short; these are etcd's own
            # recommended ratios (election timeout = 10 x heartbeat).
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            *tls,
        ]

    def _spawn(self, m: EtcdMember, state: str) -> None:
        log = m.log_path.open("ab")
        try:
            m.process = subprocess.Popen(
                self._argv(m, state), stdout=log, stderr=subprocess.STDOUT, cwd=self.base
            )
        finally:
            log.close()
        m.paused = False

    def start(self) -> None:
        for m in self.members:
            self._spawn(m, "new")
        self.wait_healthy(self.members)

    def wait_healthy(self, members: list[EtcdMember], timeout: float = _START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        pending = list(members)
        while pending and time.monotonic() < deadline:
            for m in list(pending):
                if m.process is not None and m.process.poll() is not None:
                    self._fail(f"{m.name} exited with {m.process.returncode} while starting")
                if m.healthy():
                    pending.remove(m)
            if pending:
                time.sleep(0.1)
        if pending:
            self._fail(f"not healthy within {timeout:.0f} s: {[m.name for m in pending]}")

    def _fail(self, what: str) -> None:
        logs = "\n".join(
            f"--- {m.name} ({m.log_path}) ---\n"
            + (m.log_path.read_text(errors="replace")[-2000:] if m.log_path.exists() else "")
            for m in self.members
        )
        pytest.fail(f"etcd test cluster: {what}\n{logs}", pytrace=False)

    def kill(self, index: int) -> None:
        """SIGKILL one member, as a crashed machine would."""
        m = self.members[index]
        if m.process is not None and m.process.poll() is None:
            if m.paused:
                m.process.send_signal(signal.SIGCONT)
            m.process.kill()
            m.process.wait(timeout=10)
        m.paused = False

    def pause(self, index: int) -> None:
        """SIGSTOP one member: its sockets stay open but nothing answers."""
        m = self.members[index]
        assert m.process is not None and m.process.poll() is None, f"{m.name} is not running"
        m.process.send_signal(signal.SIGSTOP)
        m.paused = True

    def resume(self, index: int) -> None:
        m = self.members[index]
        assert m.process is not None, f"{m.name} was never started"
        m.process.send_signal(signal.SIGCONT)
        m.paused = False

    def restart(self, index: int) -> None:
        """Start a killed member again on its own data directory and ports."""
        m = self.members[index]
        self.kill(index)
        self._spawn(m, "existing")
        self.wait_healthy([m])

    def restart_all(self) -> None:
        """Kill every member, then start them all again on their data directories."""
        self.stop_all()
        for m in self.members:
            self._spawn(m, "existing")
        self.wait_healthy(self.members)

    def stop_all(self) -> None:
        for i in range(len(self.members)):
            self.kill(i)


def _start_cluster(tmp_path: Path, *, tls: bool) -> Iterator[EtcdCluster]:
    if not (Path(ETCD_BINARY).is_file() and os.access(ETCD_BINARY, os.X_OK)) and (
        shutil.which(ETCD_BINARY) is None
    ):
        pytest.fail(
            f"etcd test cluster: expected an etcd 3.4 binary at {ETCD_BINARY}, found none. "
            "Install Debian's etcd-server with scripts/install-system-deps.sh "
            "(or point METERBOX_TEST_ETCD at an etcd binary).",
            pytrace=False,
        )
    base = tmp_path / "etcd"
    base.mkdir()
    cluster = EtcdCluster.create(base, tls=tls)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from _start_cluster(tmp_path, tls=False)


@pytest.fixture
def etcd_tls_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    yield from _start_cluster(tmp_path, tls=True)
