"""Three real meterbox nodes sharing one license's seats through a real etcd cluster.

No tests of its own. :func:`make_cluster_site` signs one license with short leases
and initialises one data directory per node (each its own instance);
:class:`ClusterNode` runs ``meterbox server run --cluster etcd://...`` on a free
loopback port. :func:`seat_intervals` and :func:`most_held_at_once` rebuild, from every
node's exported and verified ledger, the time each lease held a seat, and the most
seats held at one instant across all nodes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from meterbox.ledger import Record, RecordType
from meterbox.licenses import Feature, License, Meter
from meterbox.server._instance import init_server
from meterbox.tpm import DEFAULT_TCTI, TpmMode
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys
from support.etcd import EtcdCluster
from support.server_proc import Data, ServerProcess

LICENSE_ID = "lic-cluster"
FEATURE = "cad"
SEATS, OVERDRAFT = 3, 1
#: A ``refuse`` meter whose limit is shared by the whole cluster (quota blocks).
QUOTA_METER, QUOTA_LIMIT = "jobs", 300
#: Short leases, so a killed node's seats run out within a test.
LEASE_SECONDS = 6


@dataclass(frozen=True)
class ClusterSite:
    home: Path
    nodes: tuple[Data, ...]


def make_cluster_site(
    root: Path,
    nodes: int = 3,
    *,
    license_id: str = LICENSE_ID,
    meters: dict[str, Meter] | None = None,
    cluster_size: int = 1,
    store: bool = False,
    name: str = "node",
    seats: int = SEATS,
    overdraft: int = OVERDRAFT,
) -> ClusterSite:
    """A vendor home and ``nodes`` initialised data directories ``root/<name><i>``.

    ``seats`` and ``overdraft``: of the license's one feature, :data:`FEATURE`.

    ``store``: the license is also added to the vendor's store, so every node's report
    can be ingested against it.
    """
    home = root / "vendor"
    keys = vendor_keys.init(home)
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    lic = License(
        license_id=license_id,
        customer="ACME Labs",
        product="Solver",
        issued=issued,
        vendor_key_id=keys.current_id.hex(),
        features={FEATURE: Feature(seats=seats, overdraft=overdraft, lease_seconds=LEASE_SECONDS)},
        meters=meters
        if meters is not None
        else {"runs": Meter(limit=None), QUOTA_METER: Meter(limit=QUOTA_LIMIT)},
        expires=issued + timedelta(days=365),
        cluster_size=cluster_size,
    )
    document = lic.sign(keys.signer())
    if store:
        with VendorStore.open(None, home=home) as db:
            db.add_license(lic, document)
    lic_file = root / "site.lic"
    lic_file.write_bytes(document)
    out = []
    for i in range(nodes):
        data = root / f"{name}{i}"
        init_server(
            data,
            vendor_pub=home / "vendor.pub",
            license_files=[lic_file],
            fingerprint=f"{name}{i}",
            tpm=TpmMode.OFF,
            tpm_tcti=DEFAULT_TCTI,
        )
        out.append(Data(home, data, (data / "admin.token").read_text().strip()))
    return ClusterSite(home, tuple(out))


class ClusterNode(ServerProcess):
    """A node of the cluster, talking to the etcd members ``etcd_members``."""

    def __init__(self, site: Data, root: Path, etcd: EtcdCluster, etcd_members: Sequence[int]):
        super().__init__(site.data, root / f"{site.data.name}.log")
        self.site = site
        scheme = "etcds://" if etcd.tls else "etcd://"
        cluster = scheme + ",".join(etcd.members[i].endpoint for i in etcd_members)
        self.args = ("--cluster", cluster, "--advertise-url", self.url)
        if etcd.tls is not None:
            tls = etcd.tls
            self.args += ("--cluster-ca", str(tls.ca), "--cluster-cert", str(tls.client_cert),
                          "--cluster-key", str(tls.client_key))  # fmt: skip

    def export(self) -> list[Record]:
        r = httpx.post(
            f"{self.url}/v1/admin/export",
            headers={"Authorization": f"Bearer {self.site.token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        records, result = self.site.verify(r.content)
        assert not result.critical, result.findings
        return records


@dataclass(frozen=True)
class Interval:
    node: str
    lease_id: str
    start_ms: int
    end_ms: int


def seat_intervals(node: str, records: Iterable[Record]) -> list[Interval]:
    """When each lease of one node's ledger held a seat: ``[checkout, end)``.

    The end is the release, expiry or removal record, but never later than the lease's
    last recorded expiry plus one second (expiries are recorded in whole seconds); a
    lease with no end on record (its node was killed) ends at that expiry.
    """
    start: dict[str, int] = {}
    expiry: dict[str, int] = {}
    out = []
    for r in sorted(records, key=lambda x: x.seq):
        lease = str(r.payload.get("i"))
        if r.type == RecordType.SEAT_CHECKOUT:
            start[lease] = r.wall_ms
            expiry[lease] = r.payload["e"] * 1000 + 1000
        elif r.type == RecordType.SEAT_RENEW and lease in start:
            expiry[lease] = r.payload["e"] * 1000 + 1000
        elif (
            r.type in (RecordType.SEAT_RELEASE, RecordType.SEAT_EXPIRE, RecordType.SEAT_REMOVED)
            and lease in start
        ):
            out.append(Interval(node, lease, start.pop(lease), min(r.wall_ms, expiry[lease])))
    out += [Interval(node, lease, t, expiry[lease]) for lease, t in start.items()]
    return out


def most_held_at_once(intervals: Iterable[Interval]) -> tuple[int, int]:
    """(most intervals covering one instant, that instant in ms); ends sort before starts."""
    points = sorted(
        [(i.start_ms, 1) for i in intervals] + [(i.end_ms, -1) for i in intervals],
        key=lambda p: (p[0], p[1]),
    )
    held = most = at = 0
    for t, step in points:
        held += step
        if held > most:
            most, at = held, t
    return most, at


@dataclass
class Load:
    """Clients racing for seats across all nodes, failing over on 503 and errors."""

    urls: list[str]
    clients: int
    hold_s: float = 0.02
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    granted: int = 0
    denied: int = 0
    unavailable: int = 0
    failovers: int = 0
    errors: list[str] = field(default_factory=list)
    #: time.monotonic() of every grant, to see that clients resumed after a drill.
    grants_at: list[float] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for i in range(self.clients):
            t = threading.Thread(target=self._client, args=(f"client-{i}", i), daemon=True)
            self.threads.append(t)
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def grants_since(self, t: float) -> int:
        with self.lock:
            return sum(1 for g in self.grants_at if g >= t)

    def _client(self, client_id: str, n: int) -> None:
        at = n % len(self.urls)
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                url = self.urls[at]
                try:
                    r = c.post(
                        f"{url}/v1/seats/checkout",
                        json={"feature": FEATURE, "client_id": client_id},
                    )
                except httpx.HTTPError:
                    r = None
                if r is None or r.status_code == 503:
                    with self.lock:
                        self.failovers += 1
                        self.unavailable += r is not None
                    at = (at + 1) % len(self.urls)
                    time.sleep(0.05)
                    continue
                if r.status_code == 409:
                    with self.lock:
                        self.denied += 1
                    time.sleep(0.01)
                    continue
                if r.status_code != 200:
                    with self.lock:
                        self.errors.append(f"{client_id}@{url}: {r.status_code} {r.text[:200]}")
                    return
                lease_id = r.json()["lease_id"]
                with self.lock:
                    self.granted += 1
                    self.grants_at.append(time.monotonic())
                time.sleep(self.hold_s)
                # If the node is gone, the seat runs out with its etcd lease.
                with contextlib.suppress(httpx.HTTPError):
                    c.post(f"{url}/v1/seats/release", json={"lease_id": lease_id})


@pytest.fixture
def cluster_nodes(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[list[ClusterNode]]:
    site = make_cluster_site(tmp_path)
    # Node 2 talks to etcd member 2 only, so a drill can cut it off from etcd alone.
    wiring = [(0, 1, 2), (1, 2, 0), (2,)]
    started = [
        ClusterNode(d, tmp_path, etcd_cluster, w) for d, w in zip(site.nodes, wiring, strict=True)
    ]
    try:
        for n in started:
            n.start()
        yield started
    finally:
        for n in started:
            n.stop()


@pytest.fixture
def cluster_licence_nodes(tmp_path: Path, etcd_cluster: EtcdCluster) -> Iterator[list[ClusterNode]]:
    """Three nodes of a license issued for a three-node cluster and held in the vendor's
    store (so every node's report can be ingested), each talking to every etcd member."""
    site = make_cluster_site(tmp_path, cluster_size=3, store=True)
    started = [ClusterNode(d, tmp_path, etcd_cluster, (0, 1, 2)) for d in site.nodes]
    try:
        for n in started:
            n.start()
        yield started
    finally:
        for n in started:
            n.stop()


def check_ledgers(nodes: Sequence[ClusterNode]) -> int:
    """Export and verify every node's ledger; the most seats held at once over all of them."""
    intervals = []
    for n in nodes:
        intervals += seat_intervals(n.url, n.export())
    most, at = most_held_at_once(intervals)
    held = [i for i in intervals if i.start_ms <= at < i.end_ms]
    assert most <= SEATS + OVERDRAFT, (most, at, held)
    return most
