"""`make demo`: the whole round trip on the embedded default (SQLite and local files).

vendor init -> issue a license -> server init -> server run -> simulated clients take
seats and record usage -> export a report -> vendor ingest (receipt) -> bill ->
server import of the receipt. Every step runs the real `meterbox` command (or the
real client SDK) and prints what happened. Files are left in one folder, named at
the end. Exit status 0 means every step did what it should.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from rich.console import Console

from meterbox.client import Client
from meterbox.errors import NoSeatAvailable

console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "meterbox", *args]
    console.print(f"[dim]$ meterbox {shlex.join(args)}[/]")
    # Each output line is printed indented by two columns, so the command draws its
    # tables two columns narrower than this console: nothing wraps mid-row.
    env = {**os.environ, "COLUMNS": str(max(40, console.width - 2))}
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False, env=env)
    for line in (done.stdout + done.stderr).strip().splitlines():
        # Tables already fit; long prose lines wrap at word boundaries.
        console.print(f"  {line}", highlight=False, markup=False)
    if check and done.returncode != 0:
        raise SystemExit(f"demo step failed with exit status {done.returncode}")
    return done


def _step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def main() -> int:
    root = Path(os.environ.get("METERBOX_DEMO_DIR") or tempfile.mkdtemp(prefix="meterbox-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"

    _step("1. Vendor: create keys")
    _run(["vendor", "init", "--home", "vendor"], root)

    _step("2. Vendor: issue a license (2 CAD seats + 1 overdraft, 500 solver runs a month)")
    _run(
        [
            "vendor", "issue", "--home", "vendor", "--customer", "Acme Labs",
            "--product", "Solver Suite", "--seats", "cad=2+1", "--lease", "30",
            "--meter", "solver-runs=500/month", "--report-every", "30", "--grace", "7",
            "-o", "acme.lic",
        ],
        root,
    )  # fmt: skip

    _step("3. Customer: set up the on-site server")
    _run(
        ["server", "init", "--data", "server", "--vendor-key", "vendor/vendor.pub",
         "--license", "acme.lic"],
        root,
    )  # fmt: skip

    _step(f"4. Customer: run the server on {url}")
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "meterbox", "server", "run", "--data", "server",
         "--port", str(port)],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        _wait_healthy(url)
        console.print(f"  server up (pid {server.pid}), log in {root / 'server.log'}")

        _step("5. Applications: take seats and record usage")
        _simulate_clients(url, root)

        _step("6. Customer: export the report")
        _run(["server", "status", "--data", "server"], root)
        _run(["server", "export", "--data", "server", "-o", "report-1.mbr"], root)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    console.print("  server stopped cleanly (SIGTERM): in-flight requests finished, ledger synced")

    _step("7. Vendor: ingest the report and write a receipt")
    _run(["vendor", "ingest", "--home", "vendor", "report-1.mbr",
          "--receipt-out", "receipt-1.mbr"], root)  # fmt: skip

    _step("8. Vendor: bill the month")
    period = time.strftime("%Y-%m", time.gmtime())
    _run(["vendor", "bill", "--home", "vendor", "--period", period], root)

    _step("9. Vendor: a replayed report is refused and bills nothing")
    replay = _run(["vendor", "ingest", "--home", "vendor", "report-1.mbr",
                   "--receipt-out", "receipt-replay.mbr"], root, check=False)  # fmt: skip
    if replay.returncode != 1:
        raise SystemExit("a replayed report should have been rejected")

    _step("10. Customer: import the receipt (acknowledged records are compacted)")
    _run(["server", "import", "--data", "server", "receipt-1.mbr"], root)
    _run(["server", "status", "--data", "server"], root)

    console.rule("[bold green]demo complete")
    console.print(f"All files are in [bold]{root}[/]")
    return 0


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the server did not become healthy within 30 s")


def _simulate_clients(url: str, root: Path) -> None:
    results: list[str] = []

    def workstation(n: int) -> None:
        client = Client(url, client_id=f"workstation-{n}", spool=root / f"spool-{n}.db")
        try:
            with client.seat("cad") as seat:
                kind = "an overdraft seat" if seat.overdraft else "a seat"
                results.append(f"workstation-{n}: got {kind} ({seat.lease_id[:8]}…)")
                for _ in range(5):
                    r = client.record("solver-runs", 7)
                    used = r.receipt.used if r.receipt else "spooled"
                    results.append(f"workstation-{n}: recorded 7 solver runs -> used {used}")
                time.sleep(0.5)
        except NoSeatAvailable as exc:
            results.append(f"workstation-{n}: denied: {exc.problem}")
        finally:
            client.close()

    threads = [threading.Thread(target=workstation, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for line in sorted(results):
        # Tables already fit; long prose lines wrap at word boundaries.
        console.print(f"  {line}", highlight=False, markup=False)
    seats = httpx.get(f"{url}/v1/seats", timeout=5).json()
    for f in seats["features"]:
        console.print(f"  feature {f['feature']}: {f['in_use']} in use now, {f['denials']} denials")


if __name__ == "__main__":
    raise SystemExit(main())
