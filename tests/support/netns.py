"""Three meterbox hosts in network namespaces the test creates, each with an etcd member.

No tests of its own. :class:`NetnsSite` makes, with Debian's iproute2 (``ip``):

* a *switch* namespace holding one bridge;
* three *host* namespaces ``host0..2`` at ``10.213.0.1..3`` and one *client* namespace
  at ``10.213.0.100``, each joined to the bridge by a veth pair whose bridge end stays
  in the switch namespace.

The addresses exist only inside those namespaces: nothing is added to the machine's own
network namespace. Each host runs one etcd member (:class:`NsEtcd`) and one meterbox node
(:class:`NsNode`) under ``ip netns exec``. :meth:`NetnsSite.partition` sets the bridge end
of one host's veth down, so that host's etcd member *and* its node lose every other host
and the clients at once (a real partition, not a paused process); :meth:`NetnsSite.heal`
sets it up again.

The test process itself stays in its own namespace. Code that must talk to the hosts
runs in a thread that has entered the client namespace (:func:`enter`,
:func:`in_namespace`): ``setns(2)`` moves only the calling thread, and a socket keeps the
namespace it was made in.

Teardown (:meth:`NetnsSite.close`, always called by the ``netns_site`` fixture) kills
every process it started and deletes every namespace, which removes the veth pairs and
the bridge with them. If namespaces cannot be made (no ``ip``, no CAP_SYS_ADMIN) the
test fails with what was expected and how to get it; it never skips.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from support.etcd import ETCD_BINARY

T = TypeVar("T")

IP = shutil.which("ip") or "/usr/sbin/ip"
SUBNET = "10.213.0"
HOSTS = 3
CLIENT_ADDRESS = f"{SUBNET}.100"
ETCD_CLIENT_PORT, ETCD_PEER_PORT, NODE_PORT = 2379, 2380, 8400
_CLONE_NEWNET = 0x40000000
_START_TIMEOUT_S = 60.0
_libc = ctypes.CDLL(None, use_errno=True)


def host_address(i: int) -> str:
    return f"{SUBNET}.{i + 1}"


def _ip(*args: str) -> None:
    done = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(
            f"network namespaces: `ip {' '.join(args)}` failed ({done.returncode}): "
            f"{done.stderr.strip()}. Expected iproute2 and the right to make network "
            "namespaces (root or CAP_SYS_ADMIN + CAP_NET_ADMIN); install iproute2 with "
            "scripts/install-system-deps.sh and run the cluster acceptance tests as root.",
            pytrace=False,
        )


def enter(namespace: str) -> None:
    """Move the calling thread into network namespace ``namespace`` (``setns(2)``)."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {namespace}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_namespace(namespace: str, fn: Callable[[], T], timeout: float = 120.0) -> T:
    """``fn()`` run in a fresh thread inside ``namespace``; its result, or its exception."""
    out: queue.Queue[tuple[bool, object]] = queue.Queue()

    def run() -> None:
        try:
            enter(namespace)
            out.put((True, fn()))
        except BaseException as exc:
            out.put((False, exc))

    threading.Thread(target=run, daemon=True).start()
    ok, value = out.get(timeout=timeout)
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value  # type: ignore[return-value]


@dataclass
class _Proc:
    """One process started under ``ip netns exec`` (which execs it: same pid)."""

    namespace: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [IP, "netns", "exec", self.namespace, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@dataclass
class NsEtcd(_Proc):
    """The etcd member of one host, on its own address only."""

    index: int = 0
    data_dir: Path = Path()
    initial_cluster: str = ""

    @property
    def client_url(self) -> str:
        return f"http://{host_address(self.index)}:{ETCD_CLIENT_PORT}"

    @property
    def endpoint(self) -> str:
        return f"{host_address(self.index)}:{ETCD_CLIENT_PORT}"

    def start(self, state: str) -> None:
        peer = f"http://{host_address(self.index)}:{ETCD_PEER_PORT}"
        self.spawn(
            [
                ETCD_BINARY,
                "--name",
                f"etcd{self.index}",
                "--data-dir",
                str(self.data_dir),
                "--listen-client-urls",
                self.client_url,
                "--advertise-client-urls",
                self.client_url,
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                self.initial_cluster,
                "--initial-cluster-token",
                "meterbox-netns",
                "--initial-cluster-state",
                state,
                # A member back from a partition asks before it campaigns, so its higher
                # term does not depose a healthy leader (deploy/cluster/etcd.conf.yml too).
                "--pre-vote",
                # etcd's own recommended ratio (election timeout = 10 x heartbeat), kept short.
                "--heartbeat-interval",
                "100",
                "--election-timeout",
                "1000",
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
            ]
        )

    def healthy(self) -> bool:
        try:
            r = httpx.get(self.client_url + "/health", timeout=1)
            return bool(r.json().get("health") == "true")
        except (httpx.HTTPError, ValueError):
            return False


@dataclass
class NsNode(_Proc):
    """The meterbox node of one host: ``server run --host 10.213.0.k --cluster etcd://...``."""

    index: int = 0
    data: Path = Path()
    cluster: str = ""

    @property
    def url(self) -> str:
        return f"http://{host_address(self.index)}:{NODE_PORT}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
        self.spawn(
            [
                sys.executable,
                "-m",
                "meterbox",
                "server",
                "run",
                "--data",
                str(self.data),
                "--host",
                host_address(self.index),
                "--port",
                str(NODE_PORT),
                # The clients here are the test's own; seat and usage keys are other tests' work.
                "--api-keys",
                "optional",
                "--log-level",
                "warning",
                "--cluster",
                self.cluster,
                "--advertise-url",
                self.url,
            ],
            env=env,
        )


@dataclass
class NetnsSite:
    """The namespaces, the bridge, and every process in them; see the module docstring."""

    root: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    made: list[str] = field(default_factory=list)
    etcd: list[NsEtcd] = field(default_factory=list)
    nodes: list[NsNode] = field(default_factory=list)

    @property
    def switch(self) -> str:
        return f"mb{self.tag}-sw"

    @property
    def client(self) -> str:
        return f"mb{self.tag}-cl"

    def host(self, i: int) -> str:
        return f"mb{self.tag}-h{i}"

    def create(self) -> None:
        if not Path(IP).is_file():
            pytest.fail(
                f"network namespaces: expected iproute2's `ip` at {IP}, found none. "
                "Install it with scripts/install-system-deps.sh.",
                pytrace=False,
            )
        self._add(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        ends = [(self.host(i), f"h{i}", host_address(i)) for i in range(HOSTS)]
        ends.append((self.client, "cl", CLIENT_ADDRESS))
        for ns, port, address in ends:
            self._add(ns)
            _ip("-n", self.switch, "link", "add", port, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def _add(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self.made.append(ns)

    # -- etcd and nodes

    def start_etcd(self) -> None:
        initial = ",".join(
            f"etcd{i}=http://{host_address(i)}:{ETCD_PEER_PORT}" for i in range(HOSTS)
        )
        for i in range(HOSTS):
            m = NsEtcd(
                self.host(i),
                self.root / f"etcd{i}.log",
                index=i,
                data_dir=self.root / f"etcd{i}",
                initial_cluster=initial,
            )
            m.start("new")
            self.etcd.append(m)
        self.wait_etcd(range(HOSTS))

    def restart_etcd(self, i: int) -> None:
        self.etcd[i].kill9()
        self.etcd[i].start("existing")
        self.wait_etcd([i])

    def wait_etcd(self, which: range | list[int]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        for i in which:
            m = self.etcd[i]
            while not in_namespace(self.client, m.healthy):
                if not m.running:
                    pytest.fail(f"etcd{i} exited while starting:\n{m.tail()}", pytrace=False)
                if time.monotonic() > deadline:
                    pytest.fail(f"etcd{i} not healthy in time:\n{m.tail()}", pytrace=False)
                time.sleep(0.1)

    def add_node(self, i: int, data: Path) -> NsNode:
        # Its own member first, then the others, so killing one member leaves two.
        order = [i] + [k for k in range(HOSTS) if k != i]
        cluster = "etcd://" + ",".join(self.etcd[k].endpoint for k in order)
        node = NsNode(self.host(i), self.root / f"node{i}.log", index=i, data=data, cluster=cluster)
        self.nodes.append(node)
        return node

    def start_node(self, node: NsNode) -> None:
        node.start()
        deadline = time.monotonic() + _START_TIMEOUT_S

        def up() -> bool:
            try:
                return httpx.get(f"{node.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        while not in_namespace(self.client, up):
            if not node.running:
                pytest.fail(f"node {node.index} exited while starting:\n{node.tail()}", False)
            if time.monotonic() > deadline:
                pytest.fail(f"node {node.index} not healthy in time:\n{node.tail()}", False)
            time.sleep(0.1)

    # -- the network

    def partition(self, i: int) -> None:
        """Cut host ``i``'s link: its etcd member and node lose everyone else."""
        _ip("-n", self.switch, "link", "set", f"h{i}", "down")

    def heal(self, i: int) -> None:
        _ip("-n", self.switch, "link", "set", f"h{i}", "up")

    def close(self) -> None:
        for p in [*self.nodes, *self.etcd]:
            p.kill9()
        for ns in reversed(self.made):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, check=False)
        self.made.clear()

    def describe(self) -> str:
        """Every namespace's addresses, for a failure message."""
        out = []
        for ns in self.made:
            done = subprocess.run(
                [IP, "-n", ns, "-j", "addr"], capture_output=True, text=True, check=False
            )
            try:
                addrs = [a["local"] for i in json.loads(done.stdout) for a in i["addr_info"]]
            except (ValueError, KeyError):
                addrs = [done.stdout.strip()]
            out.append(f"{ns}: {addrs}")
        return "\n".join(out)


@pytest.fixture
def netns_site(tmp_path: Path) -> Iterator[NetnsSite]:
    if not (Path(ETCD_BINARY).is_file() and os.access(ETCD_BINARY, os.X_OK)):
        pytest.fail(
            f"expected an etcd 3.4 binary at {ETCD_BINARY}, found none. Install Debian's "
            "etcd-server with scripts/install-system-deps.sh.",
            pytrace=False,
        )
    site = NetnsSite(tmp_path / "netns")
    site.root.mkdir()
    try:
        site.create()
        site.start_etcd()
        yield site
    finally:
        site.close()
