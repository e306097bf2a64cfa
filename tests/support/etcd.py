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

A missing binary fails the test that needs it: a cluster test that silently skips would
hide a broken environment. Install it with scripts/install-system-deps.sh.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def endpoint(self) -> str:
        """``host:port`` as written in ``--cluster etcd://...``."""
        return f"127.0.0.1:{self.client_port}"

    def healthy(self, timeout: float = 1.0) -> bool:
        try:
            with urllib.request.urlopen(self.client_url + "/health", timeout=timeout) as r:
                body = json.loads(r.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and body.get("health") == "true"


@dataclass
class EtcdCluster:
    """Three etcd members on loopback; see the module docstring."""

    base: Path
    members: list[EtcdMember] = field(default_factory=list)

    @classmethod
    def create(cls, base: Path, size: int = MEMBERS) -> EtcdCluster:
        ports = _free_ports(2 * size)
        cluster = cls(base=base)
        for i in range(size):
            name = f"etcd{i}"
            cluster.members.append(
                EtcdMember(
                    name=name,
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=base / name,
                    log_path=base / f"{name}.log",
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
        """The ``--cluster`` value a meterbox node takes: ``etcd://h1:p1,h2:p2,h3:p3``."""
        return "etcd://" + ",".join(self.endpoints)

    def _argv(self, m: EtcdMember, state: str) -> list[str]:
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


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
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
    cluster = EtcdCluster.create(base)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop_all()
