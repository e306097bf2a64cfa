"""The site's options file on the real server: 50 racing clients, reload, bad files.

The server runs on 0.0.0.0 (keys required); groups come from the clients' API keys.
Ten seats: two reserved for group cfd, interns at most three together, one per user.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.server_proc import Data, ServerProcess, make_data

OPTIONS = """\
version = 1

[feature.cad]
max_per_user = 1

[[feature.cad.reserve]]
seats = 2
group = "cfd"

[[feature.cad.max]]
seats = 3
group = "interns"
"""


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    return subprocess.run(
        [sys.executable, "-m", "meterbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
        env=env,
    )


def key(data: Path, name: str, group: str) -> str:
    out = cli("server", "keys", "create", "--data", str(data), "--name", name,
              "--group", group, "--json")  # fmt: skip
    return str(json.loads(out.stdout)["token"])


@pytest.fixture
def site(tmp_path: Path) -> Data:
    data = make_data(tmp_path, seats=10, overdraft=0)
    (data.data / "options.toml").write_text(OPTIONS)
    return data


@pytest.fixture
def server(site: Data, tmp_path: Path) -> Iterator[ServerProcess]:
    s = ServerProcess(site.data, tmp_path / "server.log", extra=("--host", "0.0.0.0"))
    s.start()
    yield s
    s.stop()


def race(url: str, clients: list[tuple[str, str, str]]) -> list[httpx.Response]:
    """Every (client id, user, key) checks out at the same moment; the answers in order."""
    answers: list[httpx.Response | None] = [None] * len(clients)
    start = threading.Barrier(len(clients))

    def one(i: int, client_id: str, user: str, token: str) -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            body = {"feature": "cad", "client_id": client_id, "user": user}
            start.wait()
            answers[i] = c.post("/v1/seats/checkout", json=body, timeout=60)

    threads = [threading.Thread(target=one, args=(i, *x)) for i, x in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a is not None for a in answers)
    return [a for a in answers if a is not None]


def test_fifty_racing_clients_never_take_reserved_seats_or_pass_a_maximum(
    site: Data, server: ServerProcess
) -> None:
    interns, staff, cfd = (key(site.data, n, n) for n in ("interns", "staff", "cfd"))
    clients = [(f"intern-{i}", f"intern-{i}", interns) for i in range(20)]
    clients += [(f"staff-{i}", f"staff-{i}", staff) for i in range(25)]
    # The same user on five machines: one seat for that user, whatever the race.
    clients += [(f"dup-{i}", "dana", staff) for i in range(5)]
    answers = race(server.url, clients)
    granted = [c for c, a in zip(clients, answers, strict=True) if a.status_code == 200]
    codes = {a.json()["error"]["code"] for a in answers if a.status_code != 200}
    assert codes <= {"policy_denied", "no_seat"}
    # Ten seats, two kept for cfd: eight for everyone else; at most three interns.
    assert len(granted) == 8
    assert sum(c[0].startswith("intern") for c in granted) <= 3
    assert sum(c[1] == "dana" for c in granted) <= 1
    # The reservation held: both cfd members get a seat now.
    for i in range(2):
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {cfd}"}) as c:
            r = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": f"cfd-{i}"})
            assert r.status_code == 200, r.text
    view = httpx.get(f"{server.url}/v1/seats").json()["features"][0]
    assert view["in_use"] == 10
    # Policy refusals are counted apart from "no seat" (only the latter is the vendor's).
    assert (view["policy_denials"], view["denials"]) == (42, 0)


def test_reload_applies_new_rules_at_once_and_a_bad_file_keeps_the_old_ones(
    site: Data, server: ServerProcess
) -> None:
    staff = key(site.data, "staff", "staff")
    answers = race(server.url, [(f"s{i}", f"s{i}", staff) for i in range(10)])
    assert sum(a.status_code == 200 for a in answers) == 8
    options = site.data / "options.toml"
    options.write_text(OPTIONS.replace('seats = 2\ngroup = "cfd"', 'seats = 2\ngroupp = "cfd"'))
    bad = cli("server", "reload", "--data", str(site.data), check=False)
    assert bad.returncode == 2 and "groupp" in bad.stderr and "options.toml:8" in bad.stderr
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {staff}"}) as c:
        refused = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "late"})
        assert refused.json()["error"]["code"] == "policy_denied"
        # Without the reservation, the two seats are free for anyone.
        options.write_text(OPTIONS.split("[[feature.cad.reserve]]")[0])
        done = cli("server", "reload", "--data", str(site.data))
        assert "cad: 0 reservation(s)" in done.stdout
        assert c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "late"}).is_success
        # SIGHUP does the same: the reservation is back for the next checkout.
        options.write_text(OPTIONS.replace("seats = 2\ngroup", "seats = 1\ngroup"))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            r = c.post("/v1/seats/checkout", json={"feature": "cad", "client_id": "later"})
            if r.status_code == 403:
                break
            assert r.status_code == 200 and time.monotonic() < deadline, r.text
            c.post("/v1/seats/release", json={"lease_id": r.json()["lease_id"]})
            time.sleep(0.05)
        assert r.json()["error"]["code"] == "policy_denied"
