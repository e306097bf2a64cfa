"""Wall time of one `meterbox` command, from exec to exit: what a shell loop pays per call.

Commands (the acceptance list of the CLI start-up work):

- ``meterbox --help``;
- ``meterbox client record`` against a running server (one usage record, delivered);
- ``meterbox vendor --help``;
- ``meterbox server status`` against the running server;
- for scale, ``python -c pass`` (the interpreter alone) on the same machine and load.

A throw-away vendor home, license and server instance are created first and the server
is started on a free loopback port; every figure is the median and the minimum of
``--rounds`` fresh processes. The import graph that keeps these low is guarded by
``tests/unit/test_cli_import_graph.py``; this script only reports the time.

Run: .venv/bin/python bench/cli_startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _meterbox(*args: str) -> list[str]:
    return [sys.executable, "-m", "meterbox", *args]


def _setup(root: Path) -> None:
    steps = [
        ["vendor", "init", "--home", "vendor"],
        ["vendor", "issue", "--home", "vendor", "--customer", "Bench", "--product", "P",
         "--seats", "cad=2", "--meter", "runs=1000000/month", "-o", "bench.lic"],
        ["server", "init", "--data", "server", "--vendor-key", "vendor/vendor.pub",
         "--license", "bench.lic"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run(_meterbox(*step), cwd=root, check=True, capture_output=True)


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy within 60 s")


def _time(cmd: list[str], cwd: Path, rounds: int, env: dict[str, str]) -> tuple[float, float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="meterbox-cli-bench-"))
    _setup(root)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "METERBOX_URL": url, "METERBOX_SPOOL": str(root / "spool.db")}
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        _meterbox("server", "run", "--data", "server", "--port", str(port)),
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    counter = iter(range(1_000_000))
    try:
        _wait_healthy(url)
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "meterbox --help": _meterbox("--help"),
            "meterbox --version": _meterbox("--version"),
            "meterbox client record": None,
            "meterbox vendor --help": _meterbox("vendor", "--help"),
            "meterbox server status": _meterbox("server", "status", "--data", "server"),
        }
        print(f"load average before: {os.getloadavg()[0]:.2f}; rounds: {args.rounds}")
        print("| command | median (s) | min (s) |")
        print("|---|---|---|")
        for name, cmd in cases.items():
            if cmd is None:
                # A new idempotency key per run, so every run delivers one new record.
                times = []
                for _ in range(args.rounds):
                    record = _meterbox(
                        "client", "record", "runs", "1", "--key", f"b{next(counter)}"
                    )
                    start = time.perf_counter()
                    subprocess.run(record, cwd=root, check=True, capture_output=True, env=env)
                    times.append(time.perf_counter() - start)
                median, best = statistics.median(times), min(times)
            else:
                median, best = _time(cmd, root, args.rounds, env)
            print(f"| `{name}` | {median:.3f} | {best:.3f} |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
