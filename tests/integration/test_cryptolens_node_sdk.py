"""The real Node SDK (npm ``cryptolens`` 1.0.11, unmodified) against ``meterbox server run``.

The package is installed into ``tests/node/node_modules`` by
``scripts/install-system-deps.sh`` (``npm ci`` from the committed lock file); these
tests fail, never skip, when Node or the package is missing. ``tests/node/driver.js``
calls the SDK as an application does: every method takes the server URL as its last
positional argument, so every optional argument before it is passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from licensing.internal import HelperMethods
from licensing.methods import Data, Key

from meterbox.compat import LIMIT_REACHED_MESSAGE
from support.cryptolens_site import ALLOWED, KEY, PRODUCT, TOKEN, Site, make_site
from support.server_proc import ServerProcess

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "cryptolens"


def _node() -> str:
    node = shutil.which("node")
    assert node is not None, "Node.js is missing: run scripts/install-system-deps.sh"
    package = NODE_DIR / "node_modules" / "cryptolens" / "package.json"
    assert package.exists(), (
        "the npm package cryptolens is not installed: run scripts/install-system-deps.sh"
    )
    assert json.loads(package.read_text())["version"] == "1.0.11"
    return node


#: A server process start may take long on a loaded two-core machine.
START_TIMEOUT = 180.0


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return make_site(tmp_path)


@pytest.fixture
def server(site: Site, tmp_path: Path) -> Iterator[ServerProcess]:
    _node()
    proc = ServerProcess(site.data, tmp_path / "server.log")
    proc.start(timeout=START_TIMEOUT)
    previous = HelperMethods.server_address
    HelperMethods.server_address = proc.url + "/api/"
    try:
        yield proc
    finally:
        HelperMethods.server_address = previous
        proc.stop()


def _run(site: Site, server: ServerProcess, tmp: Path, steps: list[dict[str, Any]]) -> list[Any]:
    plan = {
        "server": server.url,
        "publicKey": site.public_xml,
        "token": TOKEN,
        "productId": PRODUCT,
        "key": KEY,
        "steps": steps,
    }
    plan_file, out_file = tmp / "plan.json", tmp / "out.json"
    plan_file.write_text(json.dumps(plan))
    out_file.unlink(missing_ok=True)
    done = subprocess.run(
        [_node(), str(NODE_DIR / "driver.js"), str(plan_file), str(out_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: list[Any] = json.loads(out_file.read_text())
    return results


def _node_machine_code() -> str:
    done = subprocess.run(
        [_node(), "-e", "console.log(require('cryptolens').Helpers.GetMachineCode())"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_the_node_readme_example_and_node_locked_limits(
    site: Site, server: ServerProcess, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RSA_PUB_KEY": site.public_xml,
        "TOKEN": TOKEN,
        "PRODUCT_ID": str(PRODUCT),
        "LICENSE_KEY": KEY,
        "LICENSE_SERVER_URL": server.url,
    }
    done = subprocess.run(
        [_node(), str(NODE_DIR / "readme_example.js")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # The example prints license.Created: the license's creation time in Unix seconds.
    assert done.stdout.strip() == str(int(site.license.issued.timestamp())), done.stdout
    mine = _node_machine_code()
    results = _run(
        site,
        server,
        tmp_path,
        [{"op": "activate", "machineCode": "GetMachineCode()"}]
        + [{"op": "activate", "machineCode": f"node-{n}"} for n in range(4)]
        + [
            {"op": "activate", "machineCode": "node-5"},
            {"op": "activate", "machineCode": ALLOWED},
            {"op": "activate", "machineCode": "GetMachineCode()"},
            {"op": "hasFeature", "feature": 1},
            {"op": "hasFeature", "feature": "f2.voice"},
            {"op": "hasFeature", "feature": "f2.video"},
        ],
    )
    first = results[0]
    assert first["ok"], first
    assert first["mids"] == [mine], "the README activation is the machine's code"
    assert first["onRightMachine"] is True
    assert first["maxNoOfMachines"] == 5
    assert first["f"][:3] == [True, False, True]
    assert first["hasNotExpired"] is True
    assert {d["Id"]: d["IntValue"] for d in first["dataObjects"]} == {1: 100, 2: 0, 3: 0}
    assert all(r["ok"] for r in results[1:5])
    assert results[5] == {"ok": False, "error": LIMIT_REACHED_MESSAGE}
    assert results[6]["ok"] and len(results[6]["mids"]) == 6
    assert results[7]["ok"] and results[7]["onRightMachine"] is True
    assert [r["value"] for r in results[8:]] == [True, True, False]


def test_node_floating_overdraft_deactivate_and_credit_countdown(
    site: Site, server: ServerProcess, tmp_path: Path
) -> None:
    # The credit countdown is driven through data calls (the Node SDK has no
    # increment/decrement call); Node sees the values in its signed replies.
    for _ in range(2):
        reply, message = Data.decrement_int_value_to_key(
            TOKEN, PRODUCT, KEY, 1, int_value=45, enable_bound=True, bound=0
        )
        assert reply is not None, message
    results = _run(
        site,
        server,
        tmp_path,
        [
            {"op": "activate", "machineCode": "na", "floatingTimeInterval": 600},
            {"op": "activate", "machineCode": "nb", "floatingTimeInterval": 600},
            {"op": "activate", "machineCode": "nc", "floatingTimeInterval": 600},
            {"op": "activate", "machineCode": "nc", "floatingTimeInterval": 600, "maxOverdraft": 1},
            {"op": "getkey"},
            {"op": "deactivate", "machineCode": "na", "floating": True},
            {"op": "activate", "machineCode": "nd", "floatingTimeInterval": 600},
        ],
    )
    assert results[0]["ok"] and results[0]["mids"] == ["floating:na"]
    assert results[0]["onRightMachine"] is True
    assert {d["Id"]: d["IntValue"] for d in results[0]["dataObjects"]}[1] == 10
    assert results[1]["ok"]
    assert results[2] == {"ok": False, "error": LIMIT_REACHED_MESSAGE}
    assert results[3]["ok"] and results[3]["mids"] == ["floating:overdraft:nc"]
    assert results[3]["onRightMachine"] is True
    assert sorted(results[4]["mids"]) == ["floating:na", "floating:nb", "floating:overdraft:nc"]
    assert results[5] == {"ok": True, "message": ""}
    assert results[6]["ok"] and results[6]["mids"] == ["floating:nd"]


def test_node_signature_age_checks(site: Site, server: ServerProcess, tmp_path: Path) -> None:
    fresh = _run(site, server, tmp_path, [{"op": "activate", "machineCode": "aged"}])[0]
    assert fresh["ok"], fresh
    vector = json.loads((VECTORS / "activate-floating.json").read_text())
    old = json.dumps(vector["reply"])
    vector_key = (VECTORS / "public-key.xml").read_text().strip()
    age_days = int((time.time() - vector["now"]) // 86_400)
    assert age_days >= 3
    checks = _run(
        site,
        server,
        tmp_path,
        [
            {"op": "loadFromString", "saved": fresh["saved"], "days": 1},
            {"op": "loadFromString", "saved": old, "publicKey": vector_key, "days": age_days - 2},
            {"op": "loadFromString", "saved": old, "publicKey": vector_key, "days": age_days + 2},
            {"op": "loadFromString", "saved": old, "days": age_days + 2},
        ],
    )
    assert [c["loaded"] for c in checks] == [True, False, True, False]
    assert checks[0]["key"] == KEY


def test_node_activations_survive_kill_9(site: Site, server: ServerProcess, tmp_path: Path) -> None:
    before = _run(
        site,
        server,
        tmp_path,
        [
            {"op": "activate", "machineCode": "GetMachineCode()"},
            {"op": "activate", "machineCode": "lease", "floatingTimeInterval": 2 * 86_400},
        ],
    )
    assert all(r["ok"] for r in before), before
    server.kill9()
    server.start(timeout=START_TIMEOUT)
    after = _run(site, server, tmp_path, [{"op": "getkey"}])[0]
    assert after["ok"], after
    assert sorted(after["mids"]) == sorted([_node_machine_code(), "floating:lease"])
    license_key, message = Key.get_key(TOKEN, site.public_xml, PRODUCT, KEY)
    assert license_key is not None, message
    assert len(license_key.activated_machines) == 2
