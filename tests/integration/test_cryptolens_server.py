"""The real Cryptolens SDK (PyPI ``licensing`` 0.54) against the real meterbox server.

Each test builds a vendor home and a signed license with a ``cryptolens`` section,
sets up a server instance with ``init_server``, and serves
``meterbox.server._runtime.build_server`` under uvicorn on 127.0.0.1. Seats and usage
therefore go through the engine, the sealed ledger and the state store, and
survive a restart of the server on the same data directory.

License used throughout:

- feature ``cad``: 2 seats + 1 overdraft seat, 60 s default lease;
- meter ``runs``: 20 units in total, refused past that;
- cryptolens product 3349, key ``ABCDE-FGHIJ-KLMNO-PQRST``, feature ``cad``,
  allowed machine ``NODE-1``; data object 7 ``usage`` bound to ``runs`` (issued at
  0) and data object 8 ``credits`` bound to ``runs`` (issued at 5).
"""

from __future__ import annotations

import asyncio
import io
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from licensing.internal import HelperMethods
from licensing.methods import Data, Helpers, Key
from licensing.models import LicenseKey

from meterbox.compat import LIMIT_REACHED_MESSAGE, CryptolensSigner
from meterbox.ledger import RecordType, ReportVerifier
from meterbox.licenses import CryptolensSection, DataObject, Feature, License, Meter
from meterbox.server._cryptolens import CRYPTOLENS_DB, EngineCryptolensBackend
from meterbox.server._instance import ServerInstance, init_server
from meterbox.server._runtime import BuiltServer, build_server
from meterbox.vendorkit import VendorStore
from meterbox.vendorkit import keys as vendor_keys
from meterbox.vendorkit.billing import Period, bill
from meterbox.vendorkit.ingest import ingest

PRODUCT = 3349
KEY = "ABCDE-FGHIJ-KLMNO-PQRST"
TOKEN = "ignored-token"
NODE = "NODE-1"


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Server:
    """A vendor home, a server data directory, and the real server serving it."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "vendor"
        self.data = tmp / "server"
        self.keys = vendor_keys.init(self.home)
        issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
        self.license = License(
            license_id="lic-cryptolens-it",
            customer="ACME Labs",
            product="Solver",
            issued=issued,
            vendor_key_id=self.keys.current_id.hex(),
            features={"cad": Feature(seats=2, overdraft=1, lease_seconds=60)},
            meters={"runs": Meter(limit=20)},
            expires=issued + timedelta(days=365),
            cryptolens=CryptolensSection(
                product_id=PRODUCT,
                key=KEY,
                feature="cad",
                flags=(True, False, False, False, False, False, False, False),
                notes="integration",
                allowed_machines=(NODE,),
                data_objects=(
                    DataObject(7, "usage", "runs", "", 0),
                    DataObject(8, "credits", "runs", "prepaid", 5),
                ),
            ),
        )
        lic_file = tmp / "acme.lic"
        document = self.license.sign(self.keys.signer())
        lic_file.write_bytes(document)
        # Recorded in the vendor store as `meterbox vendor issue` does, so it is billed.
        with VendorStore.open(home=self.home) as store:
            store.add_license(self.license, document)
        init_server(
            self.data,
            vendor_pub=self.home / "vendor.pub",
            license_files=[lic_file],
            fingerprint="x",
        )
        self.public_xml = CryptolensSigner.load(self.data / "cryptolens.pem").public_key_xml()
        self.admin_token = (self.data / "admin.token").read_text().strip()
        self.built: BuiltServer | None = None
        self._uv: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.built = build_server(self.data)
        self._sock = _free_socket()
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(self.built.app, log_level="warning", lifespan="on")
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uv.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._uv.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self._thread.is_alive(), "uvicorn exited"
            time.sleep(0.02)
        HelperMethods.server_address = f"http://127.0.0.1:{self.port}/api/"

    def stop(self) -> None:
        assert self._uv is not None and self._thread is not None and self.built is not None
        self._uv.should_exit = True
        self._thread.join(timeout=15)
        assert not self._thread.is_alive(), "uvicorn did not stop"
        self.built.close()
        assert self._sock is not None
        self._sock.close()
        self.built = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # ---------------------------------------------------------------- helpers
    @property
    def instance(self) -> ServerInstance:
        assert self.built is not None
        return self.built.instance

    def head(self) -> tuple[int, str] | None:
        return self.instance.service.ledger_head()

    def post(self, path: str, fields: dict[str, str] | bytes) -> dict[str, Any]:
        body = fields if isinstance(fields, bytes) else urllib.parse.urlencode(fields).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=body)
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            reply: dict[str, Any] = json.loads(response.read())
            return reply

    def export(self) -> bytes:
        reply = httpx.post(
            f"http://127.0.0.1:{self.port}/v1/admin/export",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        return reply.content

    def activate(
        self, machine: str, *, interval: int = 300, overdraft: int = 0, friendly: str | None = None
    ) -> tuple[LicenseKey | None, str]:
        result: tuple[LicenseKey | None, str] = Key.activate(
            TOKEN,
            self.public_xml,
            PRODUCT,
            KEY,
            machine,
            floating_time_interval=interval,
            max_overdraft=overdraft,
            friendly_name=friendly,
        )
        return result

    def get_key(self) -> LicenseKey:
        license_key, message = Key.get_key(TOKEN, self.public_xml, PRODUCT, KEY)
        assert license_key is not None, message
        return license_key

    def values(self) -> dict[int, int]:
        reply, message = Data.list_key_data_objects(TOKEN, PRODUCT, KEY)
        assert reply is not None, message
        return {o["id"]: o["intValue"] for o in reply["dataObjects"]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    previous = HelperMethods.server_address
    srv = Server(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        if srv.built is not None:
            srv.stop()
        HelperMethods.server_address = previous


def _increment(amount: int, object_id: int = 7, **bound: Any) -> tuple[Any, str]:
    result: tuple[Any, str] = Data.increment_int_value_to_key(
        TOKEN, PRODUCT, KEY, object_id=object_id, int_value=amount, **bound
    )
    return result


def _decrement(amount: int, object_id: int = 7, **bound: Any) -> tuple[Any, str]:
    result: tuple[Any, str] = Data.decrement_int_value_to_key(
        TOKEN, PRODUCT, KEY, object_id=object_id, int_value=amount, **bound
    )
    return result


def _mids(license_key: LicenseKey) -> list[str]:
    return sorted(m.Mid for m in license_key.activated_machines)


# ---------------------------------------------------------------------- seats
def test_floating_seats_fill_then_the_next_machine_is_refused_with_the_exact_message(
    server: Server,
) -> None:
    first, message = server.activate("machine-a", friendly="alice")
    assert first is not None, message
    assert server.activate("machine-b")[0] is not None
    head = server.head()
    assert server.activate("machine-c") == (None, LIMIT_REACHED_MESSAGE)
    # The refusal is itself on record (seat.denied), so the head moved by one.
    assert head is not None
    after = server.head()
    assert after is not None
    assert after[0] == head[0] + 1
    # A live seat renews whatever the limit, and the reply lists this machine only.
    again, _ = server.activate("machine-a")
    assert again is not None
    assert [m.Mid for m in again.activated_machines] == ["floating:machine-a"]
    assert again.activated_machines[0].FriendlyName == ""
    assert again.max_no_of_machines == 2
    assert Helpers.IsOnRightMachine(
        again, is_floating_license=True, custom_machine_code="machine-a"
    )
    assert not Helpers.IsOnRightMachine(
        again, is_floating_license=True, custom_machine_code="machine-b"
    )


def test_overdraft_seat_is_capped_by_the_license_and_marked_in_mid(server: Server) -> None:
    for code in ("machine-a", "machine-b"):
        assert server.activate(code)[0] is not None
    over, message = server.activate("machine-c", overdraft=5)
    assert over is not None, message
    assert [m.Mid for m in over.activated_machines] == ["floating:overdraft:machine-c"]
    assert Helpers.IsOnRightMachine(
        over, is_floating_license=True, allow_overdraft=True, custom_machine_code="machine-c"
    )
    assert not Helpers.IsOnRightMachine(
        over, is_floating_license=True, allow_overdraft=False, custom_machine_code="machine-c"
    )
    # The license allows one overdraft seat, whatever the client asks for.
    assert server.activate("machine-d", overdraft=5) == (None, LIMIT_REACHED_MESSAGE)
    leases = server.instance.service.engine.seats.live("cad", server.instance.service.now())
    assert sorted((x.client_id, x.overdraft) for x in leases) == [
        ("machine-a", False),
        ("machine-b", False),
        ("machine-c", True),
    ]


def test_getkey_lists_live_machines_and_deactivate_frees_a_seat(server: Server) -> None:
    for code in ("machine-a", "machine-b"):
        assert server.activate(code)[0] is not None
    assert _mids(server.get_key()) == ["floating:machine-a", "floating:machine-b"]
    assert Key.deactivate(TOKEN, PRODUCT, KEY, "machine-a", floating=True) == (True, "")
    # Deactivating again is not an error: the machine is already deactivated.
    assert Key.deactivate(TOKEN, PRODUCT, KEY, "machine-a", floating=True) == (True, "")
    assert server.activate("machine-c")[0] is not None
    assert _mids(server.get_key()) == ["floating:machine-b", "floating:machine-c"]


def test_lease_length_is_the_floating_time_interval(server: Server) -> None:
    license_key, _ = server.activate("machine-a", interval=1)
    assert license_key is not None
    machine = license_key.activated_machines[0]
    assert machine.FloatingExpires - machine.Time == 1
    assert server.activate("machine-b", interval=1)[0] is not None
    time.sleep(1.2)
    # Both leases ran out: two fresh machines get regular seats again.
    assert server.activate("machine-c")[0] is not None
    assert _mids(server.get_key()) == ["floating:machine-c"]


def test_signed_reply_verifies_only_with_this_servers_public_key(server: Server) -> None:
    license_key, _ = server.activate("machine-a")
    assert license_key is not None
    saved = license_key.save_as_string()
    loaded = LicenseKey.load_from_string(server.public_xml, saved, 3)
    assert loaded is not None
    assert (loaded.key, loaded.product_id, loaded.f1, loaded.notes) == (
        KEY,
        PRODUCT,
        True,
        "integration",
    )
    assert loaded.customer["CompanyName"] == "ACME Labs"
    assert Helpers.IsOnRightMachine(
        loaded, is_floating_license=True, custom_machine_code="machine-a"
    )
    other = CryptolensSigner.generate(server.data.parent / "other.pem").public_key_xml()
    assert LicenseKey.load_from_string(other, saved, 3) is None


def test_node_locked_activates_the_first_max_machines_codes_and_seals_each_activation(
    server: Server,
) -> None:
    # MaxNoOfMachines is the floating feature's 2 seats (a version-1 license).
    head = server.head()
    assert head is not None
    license_key, message = server.activate(NODE, interval=0, friendly="lab")
    assert license_key is not None, message
    assert [m.Mid for m in license_key.activated_machines] == [NODE]
    assert Helpers.IsOnRightMachine(license_key, custom_machine_code=NODE)
    for code in ("NODE-2", "NODE-3"):
        assert server.activate(code, interval=0)[0] is not None
    assert server.activate("NODE-4", interval=0) == (None, LIMIT_REACHED_MESSAGE)
    after = server.head()
    assert after is not None
    assert after[0] == head[0] + 3, "one sealed record per new activation, none for a refusal"
    assert server.activate("NODE-3", interval=0)[0] is not None
    assert server.head() == after, "re-activating a known machine records nothing"
    # Node-locked activations take no floating seat.
    for code in ("machine-a", "machine-b"):
        assert server.activate(code)[0] is not None
    # Deactivation frees a slot (the license allows it), and is sealed too.
    assert Key.deactivate(TOKEN, PRODUCT, KEY, "NODE-2") == (True, "")
    assert server.activate("NODE-4", interval=0)[0] is not None
    assert _mids(server.get_key()) == [
        NODE,
        "NODE-3",
        "NODE-4",
        "floating:machine-a",
        "floating:machine-b",
    ]
    keys = vendor_keys.VendorKeys.load(server.home)
    verifier = ReportVerifier({kid: keys.ledger_private(kid) for kid in keys.pairs})
    records = [r for r, _ in verifier.records(io.BytesIO(server.export()))]
    machine_records = [
        (r.type, r.payload["c"], r.payload["n"])
        for r in records
        if r.type in (RecordType.MACHINE_ACTIVATED, RecordType.MACHINE_DEACTIVATED)
    ]
    assert machine_records == [
        (RecordType.MACHINE_ACTIVATED, NODE, 1),
        (RecordType.MACHINE_ACTIVATED, "NODE-2", 2),
        (RecordType.MACHINE_ACTIVATED, "NODE-3", 3),
        (RecordType.MACHINE_DEACTIVATED, "NODE-2", 2),
        (RecordType.MACHINE_ACTIVATED, "NODE-4", 3),
    ]


def test_the_sdk_works_against_meterbox_server_run_as_a_process(tmp_path: Path) -> None:
    srv = Server(tmp_path)  # set up only: the server below is a real `meterbox server run`
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meterbox", "server", "run", "--data", str(srv.data)]
            + ["--port", str(port), "--log-level", "warning"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    previous = HelperMethods.server_address
    try:
        deadline = time.monotonic() + 180  # a loaded two-core machine starts slowly
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        HelperMethods.server_address = f"http://127.0.0.1:{port}/API/"
        license_key, message = srv.activate("machine-a")
        assert license_key is not None, message
        assert [m.Mid for m in license_key.activated_machines] == ["floating:machine-a"]
        assert _increment(2)[0] is not None
        reply, _ = Data.list_key_data_objects(TOKEN, PRODUCT, KEY)
        assert [o["intValue"] for o in reply["dataObjects"]] == [2, 5]
    finally:
        HelperMethods.server_address = previous
        proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
    # What the process acknowledged is on disk: the next server sees it.
    srv.start()
    try:
        assert srv.values() == {7: 2, 8: 5}
        assert _mids(srv.get_key()) == ["floating:machine-a"]
    finally:
        srv.stop()
        HelperMethods.server_address = previous


# ----------------------------------------------------------------- data objects
def test_increment_and_decrement_change_values_seen_in_later_replies(server: Server) -> None:
    assert server.values() == {7: 0, 8: 5}
    assert _increment(3) == ({"result": 0, "message": ""}, "")
    assert _increment(2, object_id=8)[0] is not None
    assert server.values() == {7: 3, 8: 7}
    assert _decrement(1)[0] is not None
    assert server.values() == {7: 2, 8: 7}
    license_key, _ = server.activate("machine-a")
    assert license_key is not None
    assert [(d["Id"], d["Name"], d["IntValue"]) for d in license_key.data_objects] == [
        (7, "usage", 2),
        (8, "credits", 7),
    ]
    by_name = Data.increment_int_value_to_key(TOKEN, PRODUCT, KEY, name="usage", int_value=4)
    assert by_name[0] is not None, by_name[1]
    reply, _ = Data.list_key_data_objects(TOKEN, PRODUCT, KEY, name_contains="cred")
    assert reply["dataObjects"] == [
        {"id": 8, "name": "credits", "stringValue": "prepaid", "intValue": 7}
    ]
    # Every change is usage of the bound meter: 3 + 2 - 1 + 4 = 8 units of 'runs'.
    balances = server.instance.service.engine.balances(server.instance.service.now())
    assert [(b["meter"], b["used"], b["remaining"]) for b in balances] == [("runs", 8, 12)]


def test_bound_is_enforced_both_ways_and_changes_nothing(server: Server) -> None:
    assert _increment(5)[0] is not None
    head = server.head()
    result, message = _increment(6, enable_bound=True, bound=10)
    assert result is None
    assert "would cross its bound" in message
    assert "Expected a value at most 10" in message
    assert "5 + 6 = 11" in message
    result, message = _decrement(3, enable_bound=True, bound=3)
    assert result is None
    assert "Expected a value at least 3" in message
    assert server.head() == head
    assert server.values()[7] == 5
    assert _increment(5, enable_bound=True, bound=10)[0] is not None
    assert _decrement(7, enable_bound=True, bound=3)[0] is not None
    assert server.values()[7] == 3


def test_decrement_never_takes_a_data_object_below_what_it_counted(server: Server) -> None:
    assert _increment(2)[0] is not None
    head = server.head()
    result, message = _decrement(3)
    assert result is None
    assert "cannot give back more than it charged" in message
    assert "a decrement of at most 2" in message
    # Object 8 was issued at 5, but a decrement gives back only what it charged.
    result, message = _decrement(1, object_id=8)
    assert result is None
    assert "a decrement of at most 0" in message
    assert server.head() == head
    assert server.values() == {7: 2, 8: 5}


def test_quota_is_enforced_with_a_clear_message_and_records_nothing(server: Server) -> None:
    assert _increment(15)[0] is not None
    assert _increment(4, object_id=8)[0] is not None
    head = server.head()
    result, message = _increment(2)
    assert result is None
    assert "prepaid quota of meter 'runs' is used up" in message
    assert "requested 2" in message
    assert server.head() == head
    assert server.values() == {7: 15, 8: 9}
    assert _increment(1)[0] is not None
    assert server.values()[7] == 16
    # A decrement gives quota back to the license, so the next increment fits.
    assert _decrement(5)[0] is not None
    assert _increment(5, object_id=8)[0] is not None
    assert server.values() == {7: 11, 8: 14}


def test_values_and_seats_survive_a_restart(server: Server) -> None:
    assert _increment(6)[0] is not None
    assert _decrement(2)[0] is not None
    for code in ("machine-a", "machine-b"):
        assert server.activate(code, friendly=code.upper())[0] is not None
    assert server.activate(NODE, interval=0)[0] is not None
    server.restart()
    assert server.values() == {7: 4, 8: 5}
    license_key = server.get_key()
    assert _mids(license_key) == [NODE, "floating:machine-a", "floating:machine-b"]
    friendly = {m.Mid: (m.FriendlyName, m.IP) for m in license_key.activated_machines}
    assert friendly["floating:machine-a"] == ("MACHINE-A", "127.0.0.1")
    assert server.activate("machine-c") == (None, LIMIT_REACHED_MESSAGE)
    assert _increment(14)[0] is not None
    assert _increment(3)[1].startswith("The prepaid quota of meter 'runs' is used up")


def test_a_change_left_pending_by_a_crash_is_settled_from_the_engine_state(
    server: Server,
) -> None:
    assert _increment(3)[0] is not None
    server.stop()
    # Two changes a crash left pending: one the engine persisted (its idempotency
    # key is known: the usage is durable), one it never saw.
    instance = ServerInstance.open(server.data)
    try:
        asyncio.run(
            instance.service.usage(
                "runs",
                4,
                "cryptolens/7",
                "cryptolens:durable",
                license_id=instance.licenses[0][0].license_id,
            )
        )
    finally:
        instance.close()
    with sqlite3.connect(server.data / CRYPTOLENS_DB) as db:
        db.execute(
            "INSERT INTO pending VALUES ('cryptolens:durable', ?, 7, 4)", ("lic-cryptolens-it",)
        )
        db.execute(
            "INSERT INTO pending VALUES ('cryptolens:lost', ?, 7, 9)", ("lic-cryptolens-it",)
        )
    server.start()
    assert server.values() == {7: 7, 8: 5}
    with sqlite3.connect(server.data / CRYPTOLENS_DB) as db:
        assert db.execute("SELECT COUNT(*) FROM pending").fetchone() == (0,)
    # Settled once: building the backend again changes nothing.
    EngineCryptolensBackend(server.instance)
    assert server.values() == {7: 7, 8: 5}


# -------------------------------------------------------- ledger and billing
def test_usage_is_in_the_sealed_report_the_vendor_ingest_and_the_bill(server: Server) -> None:
    assert _increment(3)[0] is not None
    assert _increment(4, object_id=8)[0] is not None
    assert _decrement(2)[0] is not None
    assert server.activate("machine-a")[0] is not None
    assert Key.deactivate(TOKEN, PRODUCT, KEY, "machine-a", floating=True)[0] is not None
    report = server.export()
    key_id = server.keys.current_id
    verifier = ReportVerifier({key_id: server.keys.ledger_private(key_id)})
    records = [r for r, _ in verifier.records(io.BytesIO(report))]
    assert not verifier.result.critical, verifier.result.findings
    usage = [
        (r.type, r.payload["m"], r.payload["a"], r.payload["c"], r.payload["l"])
        for r in records
        if r.type in (RecordType.USAGE, RecordType.USAGE_DECREMENT)
    ]
    lic = "lic-cryptolens-it"
    assert usage == [
        (RecordType.USAGE, "runs", 3, "cryptolens/7", lic),
        (RecordType.USAGE, "runs", 4, "cryptolens/8", lic),
        (RecordType.USAGE_DECREMENT, "runs", 2, "cryptolens/7", lic),
    ]
    seats = [(r.type, r.payload.get("c")) for r in records if r.type.name.startswith("SEAT_")]
    assert seats == [(RecordType.SEAT_CHECKOUT, "machine-a"), (RecordType.SEAT_RELEASE, None)]
    # The vendor's ingest counts the same units, 3 + 4 - 2, and so does the bill.
    path = server.data.parent / "report.mbr"
    path.write_bytes(report)
    outcome = ingest(server.home, path, receipt_out=server.data.parent / "receipt")
    assert outcome.accepted, outcome.findings
    assert dict(outcome.totals) == {"runs": 5}
    month = datetime.fromtimestamp(
        next(r.wall_ms for r in records if r.type == RecordType.USAGE) / 1000, UTC
    )
    statement = bill(server.home, Period(month.year, month.month))
    assert [(m.license_id, m.meter, m.used, m.prepaid, m.overage) for m in statement.meters] == [
        (lic, "runs", 5, 20, 0)
    ]


# ------------------------------------------------------------ malformed input
_BASE = {"ProductId": str(PRODUCT), "Key": KEY}
_INC = "/api/data/IncrementIntValueToKey"
_ACT = "/api/key/activate"
_FLOAT = {"FloatingTimeInterval": "10", "SignMethod": "1"}


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        pytest.param(_INC, {**_BASE, "Id": "7", "IntValue": "-5"}, id="negative-increment"),
        pytest.param(_INC, {**_BASE, "Id": "99", "IntValue": "1"}, id="unknown-data-object"),
        pytest.param(_INC, {**_BASE, "IntValue": "1"}, id="no-id-or-name"),
        pytest.param(_INC, {**_BASE, "ProductId": "1", "Id": "7", "IntValue": "1"}, id="product"),
        pytest.param(
            "/api/data/DecrementIntValueToKey",
            {**_BASE, "Id": "7", "IntValue": "x"},
            id="non-integer-decrement",
        ),
        pytest.param(
            _ACT, {**_BASE, "MachineCode": "m", "FloatingTimeInterval": "10"}, id="no-sign-method"
        ),
        pytest.param(_ACT, {**_BASE, **_FLOAT, "MachineCode": "m\x00"}, id="control-char"),
        pytest.param(
            _ACT, {**_BASE, **_FLOAT, "MachineCode": "m", "Metadata": "maybe"}, id="bad-metadata"
        ),
        pytest.param(
            _ACT, {**_BASE, **_FLOAT, "MachineCode": "m", "FieldsToReturn": "x"}, id="bad-fields"
        ),
        pytest.param(
            _ACT,
            {**_BASE, **_FLOAT, "MachineCode": "m", "FloatingTimeInterval": str(30 * 86_400 + 1)},
            id="interval-over-30-days",
        ),
        pytest.param(
            _ACT, {**_BASE, "MachineCode": "m", "SignMethod": "LinqSign"}, id="linqsign-node"
        ),
        pytest.param(_INC, {**_BASE, "Id": "7", "IntValue": str(2**31)}, id="increment-over-int32"),
        pytest.param(_ACT, {**_BASE, **_FLOAT, "MachineCode": "m" * 513}, id="long-machine"),
        pytest.param("/api/key/nosuchcall", _BASE, id="unknown-call"),
        pytest.param(_ACT, b"ProductId=3349&productid=3349&Key=" + KEY.encode(), id="twice"),
    ],
)
def test_malformed_requests_get_result_1_and_leave_the_ledger_head_unmoved(
    server: Server, path: str, fields: dict[str, str] | bytes
) -> None:
    assert _increment(1)[0] is not None
    head = server.head()
    reply = server.post(path, fields)
    assert reply["result"] == 1
    assert set(reply) == {"result", "message"}
    assert reply["message"]
    assert server.head() == head
    assert server.values() == {7: 1, 8: 5}
    assert server.get_key().activated_machines == []
