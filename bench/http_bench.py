"""HTTP throughput and latency of the real server: usage records, constant-rate latency, seats.

Starts `meterbox server run` (default settings, loopback, a fresh data directory with
one license: 1,000,000 seats of ``cad``, unlimited meter ``runs``) as a subprocess and
measures, after a warm-up:

1. durable usage records per second: ``wrk`` with 32 keep-alive connections posting
   ``/v1/usage``, each request with its own idempotency key (a Lua counter);
2. p50/p99 latency at a constant 1,000 requests/s of ``/v1/usage``: Debian ships
   ``wrk`` but not ``wrk2``, so a small open-loop generator here (asyncio, raw HTTP/1.1
   over 32 keep-alive connections) sends on a fixed schedule and measures each
   latency from the request's *scheduled* time, so a stalled server is not hidden
   (no coordinated omission);
3. seat checkouts per second: ``wrk`` with 32 connections, each request a new client
   id, so each is a fresh lease written to the ledger;
4. ``GET /healthz`` per second, the same server's plain-request rate, so the usage and
   checkout rates are also printed as ratios to it.

Every 200 answer to ``/v1/usage`` is sent only after the record is durable
(fdatasync); the script checks at the end that the server's balance equals the
number of acknowledged units. Prints a markdown table.

Needs ``wrk`` (``apt-get install -y wrk``). Run:

    .venv/bin/python bench/http_bench.py [--seconds 15] [--rate 1000] [--connections 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.server_proc import ServerProcess, make_data  # noqa: E402

#: wrk script: POST JSON with a counter (per thread, prefixed by the thread number) in
#: the idempotency key or client id; ``done`` prints one JSON line of results.
LUA = r"""
local counter = 0
local threads = {}
local path = "%(path)s"
local field = "%(field)s"
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  counter = counter + 1
  local id = "w" .. tid .. "-" .. counter
  local body
  if field == "healthz" then
    return wrk.format("GET", path, nil, nil)
  end
  if field == "usage" then
    body = '{"meter":"runs","amount":1,"client_id":"bench","idempotency_key":"' .. id .. '"}'
  else
    body = '{"feature":"cad","client_id":"' .. id .. '"}'
  end
  return wrk.format(nil, path, nil, body)
end
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%%d,"seconds":%%f,"status_errors":%%d,"socket_errors":%%d,' ..
    '"p50_us":%%d,"p99_us":%%d}\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(
    url: str, path: str, field: str, seconds: int, conns: int, tmp: Path
) -> dict[str, float]:
    script = tmp / f"{field}.lua"
    script.write_text(LUA % {"path": path, "field": field})
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    res: dict[str, float] = json.loads(line[len("RESULT ") :])
    res["rate"] = res["requests"] / res["seconds"]
    return res


async def constant_rate(
    host: str, port: int, rate: float, seconds: float, conns: int
) -> tuple[list[float], int, int]:
    """Open-loop load: latencies (s, from the scheduled send time), sent, non-200."""
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for _ in range(conns):
        idle.put_nowait(await asyncio.open_connection(host, port))
    latencies: list[float] = []
    bad = 0
    loop = asyncio.get_running_loop()

    async def one(i: int, scheduled: float) -> None:
        nonlocal bad
        reader, writer = await idle.get()
        body = json.dumps(
            {"meter": "runs", "amount": 1, "client_id": "bench", "idempotency_key": f"cr-{i}"}
        ).encode()
        writer.write(
            b"POST /v1/usage HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        latencies.append(loop.time() - scheduled)
        if not head.startswith(b"HTTP/1.1 200"):
            bad += 1
        idle.put_nowait((reader, writer))

    start = loop.time() + 0.05
    total = int(rate * seconds)
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
    return latencies, total, bad


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        site = make_data(tmp, seats=1_000_000, overdraft=0)
        server = ServerProcess(site.data, tmp / "server.log")
        # Default settings: the same command an admin runs (info log level, access log).
        server.start()
        try:
            assert server.proc is not None
            url = server.url
            run_wrk(url, "/v1/usage", "usage", 3, args.connections, tmp)  # warm-up
            usage = run_wrk(url, "/v1/usage", "usage", args.seconds, args.connections, tmp)
            lat, sent, bad = asyncio.run(
                constant_rate("127.0.0.1", server.port, args.rate, args.seconds, args.connections)
            )
            seats = run_wrk(url, "/v1/seats/checkout", "seat", args.seconds, args.connections, tmp)
            health = run_wrk(url, "/healthz", "healthz", args.seconds, args.connections, tmp)
            with httpx.Client(base_url=url) as c:
                used = sum(m["used"] for m in c.get("/v1/usage/balances").json()["meters"])
        finally:
            server.stop()
    acked = (usage["requests"] - usage["status_errors"]) + (sent - bad)
    print(f"server: `meterbox server run`, default settings, loopback; {os.cpu_count()} cores\n")
    print("| workload | result | target |")
    print("|---|---|---|")
    print(
        f"| usage records, wrk {args.connections} keep-alive conns, {args.seconds} s | "
        f"{usage['rate']:,.0f} /s ({usage['status_errors']} non-2xx, "
        f"{usage['socket_errors']} socket errors); p50 {usage['p50_us'] / 1000:.1f} ms, "
        f"p99 {usage['p99_us'] / 1000:.1f} ms | >= 3,000 /s |"
    )
    print(
        f"| usage at constant {args.rate:,.0f} req/s, {args.seconds} s ({sent:,} sent, "
        f"{bad} non-200) | p50 {pct(lat, 50) * 1000:.1f} ms, p99 {pct(lat, 99) * 1000:.1f} ms, "
        f"max {max(lat) * 1000:.1f} ms, mean {statistics.fmean(lat) * 1000:.1f} ms | p99 <= 25 ms |"
    )
    print(
        f"| seat checkouts (new lease each), wrk {args.connections} conns, {args.seconds} s | "
        f"{seats['rate']:,.0f} /s ({seats['status_errors']} non-2xx); "
        f"p50 {seats['p50_us'] / 1000:.1f} ms, p99 {seats['p99_us'] / 1000:.1f} ms | - |"
    )
    print(
        f"| GET /healthz, wrk {args.connections} conns, {args.seconds} s | "
        f"{health['rate']:,.0f} /s ({health['status_errors']} non-2xx); "
        f"p50 {health['p50_us'] / 1000:.1f} ms | - |"
    )
    print(
        f"\nratios to /healthz in this run: usage {usage['rate'] / health['rate']:.2f}, "
        f"checkouts {seats['rate'] / health['rate']:.2f} (target >= 0.5)"
    )
    print(f"\nbalance check: server counts {used:,} units; this run acknowledged at least "
          f"{acked:,} in the measured phases (plus the warm-up)")  # fmt: skip


if __name__ == "__main__":
    main()
