"""Resource exhaustion against the real server: many client ids, many leases, a usage flood.

Starts `meterbox server run` as a subprocess on a free loopback port with a license
of 1,200 seats for feature ``cad`` and an unlimited meter ``runs``, then:

1. 10,000 distinct client ids each record one usage;
2. 1,000 clients check out a seat and renew (heartbeat) it;
3. a few concurrent httpx clients flood /v1/usage for a bounded time while /healthz
   latency is sampled.

Prints the server's RSS (VmRSS from /proc/PID/status) at start, after each phase and
after the flood, and /healthz latency percentiles during it. Loopback only.

    .venv/bin/python bench/exhaustion.py [--clients 10000] [--leases 1000] [--flood-seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.fuzz import make_site  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def phase_clients(url: str, n: int, conc: int) -> float:
    sem = asyncio.Semaphore(conc)
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(i: int) -> None:
            async with sem:
                r = await c.post(
                    "/v1/usage",
                    json={"meter": "runs", "amount": 1, "client_id": f"host-{i}/pid-{i}"},
                )
                assert r.status_code == 200, r.text

        await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - start


async def phase_leases(url: str, n: int, conc: int) -> tuple[float, list[str]]:
    sem = asyncio.Semaphore(conc)
    ids: list[str] = []
    start = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(i: int) -> None:
            async with sem:
                r = await c.post(
                    "/v1/seats/checkout", json={"feature": "cad", "client_id": f"seat-{i}"}
                )
                assert r.status_code == 200, r.text
                ids.append(r.json()["lease_id"])

        await asyncio.gather(*(one(i) for i in range(n)))

        async def renew(lease: str) -> None:
            async with sem:
                r = await c.post("/v1/seats/heartbeat", json={"lease_id": lease})
                assert r.status_code == 200, r.text

        await asyncio.gather(*(renew(x) for x in ids))
    return time.perf_counter() - start, ids


async def phase_flood(url: str, seconds: float, workers: int, pid: int) -> dict[str, float]:
    stop = time.monotonic() + seconds
    sent = 0
    errors = 0
    health: list[float] = []
    peak = 0.0

    async def flood(k: int) -> None:
        nonlocal sent, errors
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            i = 0
            while time.monotonic() < stop:
                r = await c.post(
                    "/v1/usage",
                    json={"meter": "runs", "amount": 1, "client_id": f"flood-{k}-{i % 500}"},
                )
                sent += 1
                errors += r.status_code != 200
                i += 1

    async def probe() -> None:
        nonlocal peak
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            while time.monotonic() < stop:
                t = time.perf_counter()
                r = await c.get("/healthz")
                assert r.status_code == 200
                health.append((time.perf_counter() - t) * 1000)
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.2)

    start = time.perf_counter()
    await asyncio.gather(*(flood(k) for k in range(workers)), probe())
    took = time.perf_counter() - start
    health.sort()
    return {
        "requests": sent,
        "errors": errors,
        "rate": sent / took,
        "p50": statistics.median(health),
        "p99": health[min(len(health) - 1, int(len(health) * 0.99))],
        "max": health[-1],
        "peak_rss": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--leases", type=int, default=1_000)
    parser.add_argument("--flood-seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        site = make_site(Path(tmp), seats=1200, meter_limit=None, lease_seconds=600)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "meterbox",
                "server",
                "run",
                "--data",
                str(site.data),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            rows = [("start", rss_mib(proc.pid), "")]
            took = asyncio.run(phase_clients(url, args.clients, 32))
            rows.append(
                (
                    f"{args.clients} client ids, 1 usage each",
                    rss_mib(proc.pid),
                    f"{args.clients / took:,.0f} req/s",
                )
            )
            took, ids = asyncio.run(phase_leases(url, args.leases, 32))
            live = httpx.get(f"{url}/v1/seats", timeout=30).json()["features"][0]["in_use"]
            rows.append(
                (
                    f"{len(ids)} leases held and renewed",
                    rss_mib(proc.pid),
                    f"{2 * len(ids) / took:,.0f} req/s, in use {live}",
                )
            )
            f = asyncio.run(phase_flood(url, args.flood_seconds, args.workers, proc.pid))
            rows.append(
                (
                    f"usage flood {args.flood_seconds:.0f} s, {args.workers} clients",
                    f["peak_rss"],
                    f"{f['requests']:,.0f} requests ({f['rate']:,.0f}/s), "
                    f"{f['errors']:.0f} errors; /healthz p50 {f['p50']:.1f} ms, "
                    f"p99 {f['p99']:.1f} ms, max {f['max']:.1f} ms",
                )
            )
            time.sleep(2)
            rows.append(("after the flood", rss_mib(proc.pid), ""))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
        print(f"{'phase':45} {'RSS MiB':>8}  notes")
        for name, rss, note in rows:
            print(f"{name:45} {rss:8.1f}  {note}")


if __name__ == "__main__":
    main()
