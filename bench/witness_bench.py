"""What witnessing costs: durable usage records per second with and without witness heads.

Starts `meterbox server run` (default settings, loopback, a fresh data directory with
one license) and drives ``POST /v1/usage`` with ``wrk`` over keep-alive connections,
in alternating rounds of two kinds:

* *plain*: no ``Meterbox-Witness`` header (a client SDK from before witnesses, or a
  Cryptolens SDK);
* *witnessed*: every request carries the latest ``Meterbox-Head`` an answer on that
  wrk thread carried, as the SDK does. Each wrk thread is one client id, so the
  server seals a WITNESS record whenever that thread hands back a head newer than the
  last one it sealed for it (with 16 connections per thread, about one per batch);
* *witnessed-each*: the same, but each request names a new client id, so every
  witnessed head is new for its client and the server seals one WITNESS per usage
  record: the worst case (an SDK sends one request at a time and so costs one
  WITNESS per request too). Its baseline is *plain-each*: a new client id per
  request without a witness, so the ratio isolates the witness.

Every kind defines the same Lua ``response`` callback, so wrk's own work is the same.
Prints a markdown table: rate of each round, the median per kind, the ratio, and the
WITNESS records sealed per witnessed usage record (from ``/v1/status``).

``--in-process`` measures the same without HTTP: the real ``ServerInstance`` (ledger,
state database, group commit) driven by 32 asyncio tasks, each a client that records
usage one request at a time and, when witnessing, hands back the head its previous
answer carried (one WITNESS per usage record), in alternating rounds.

Needs ``wrk`` (``apt-get install -y wrk``). Run:

    .venv/bin/python bench/witness_bench.py [--seconds 10] [--rounds 2] [--connections 32]
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
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support.server_proc import ServerProcess, make_data  # noqa: E402

LUA = r"""
local counter = 0
local threads = {}
local witness = %(witness)s
local each = %(each)s
local round = "%(round)s"
local head = nil
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
  local id = round .. "-" .. tid .. "-" .. counter
  local client = "bench-" .. tid
  if each then client = id end
  local body = '{"meter":"runs","amount":1,"client_id":"' .. client ..
    '","idempotency_key":"' .. id .. '"}'
  -- A headers table given to wrk.format replaces wrk.headers, so it names both.
  local headers = {["Content-Type"] = "application/json"}
  if witness and head ~= nil then
    headers["Meterbox-Witness"] = head
  end
  return wrk.format(nil, "/v1/usage", headers, body)
end
function response(status, headers, body)
  local h = headers["Meterbox-Head"] or headers["meterbox-head"]
  if h ~= nil then head = h end
end
function done(summary, latency, requests)
  io.write(string.format(
    'RESULT {"requests":%%d,"seconds":%%f,"status_errors":%%d,"p50_us":%%d,"p99_us":%%d}\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


KINDS = {
    "plain": (False, False),
    "witnessed": (True, False),
    "plain-each": (False, True),
    "witnessed-each": (True, True),
}


def run(url: str, kind: str, name: str, seconds: int, conns: int, tmp: Path) -> dict[str, float]:
    witness, each = KINDS[kind]
    script = tmp / f"{name}.lua"
    lua = {"witness": str(witness).lower(), "each": str(each).lower(), "round": name}
    script.write_text(LUA % lua)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    res: dict[str, float] = json.loads(line[len("RESULT ") :])
    res["rate"] = (res["requests"] - res["status_errors"]) / res["seconds"]
    return res


def sealed(url: str) -> int:
    return int(httpx.get(f"{url}/v1/status", timeout=10).json()["witness"]["witnesses_sealed"])


async def _drive(service: Any, witness: bool, seconds: float, tag: str) -> int:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    done = 0

    async def client(c: int) -> None:
        nonlocal done
        head = None
        i = 0
        while loop.time() < end:
            i += 1
            if witness and head is not None:
                await service.witness(f"{tag}-{c}", head)
            await service.usage("runs", 1, f"{tag}-{c}", f"{tag}-{c}-{i}")
            head = service.head_to_hand_out()
            done += 1

    await asyncio.gather(*(client(c) for c in range(32)))
    await service.aclose()
    return done


def in_process(seconds: float, rounds: int) -> None:
    from meterbox.server import ServerInstance
    from meterbox.server._witness import WitnessConfig, WitnessDesk

    modes = {
        "plain": None,
        "witnessed": WitnessConfig(),
        "every-head": WitnessConfig(seal_every_ms=0),
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        site = make_data(Path(d), seats=10, overdraft=0)
        instance = ServerInstance.open(site.data)
        try:
            service = instance.service
            asyncio.run(_drive(service, True, 1.0, "warm"))
            for r in range(rounds):
                for mode, config in modes.items():
                    if config is not None:
                        service.witnesses = WitnessDesk(service.instance_id, config)
                    n = asyncio.run(_drive(service, config is not None, seconds, f"r{r}{mode}"))
                    rates[mode].append(n / seconds)
                    sealed = service.witnesses.witnesses if config is not None else 0
                    print(f"| {r} | {mode} | {n / seconds:,.0f} | {sealed:,} / {n:,} |")
        finally:
            instance.close()
    for mode in modes:
        m = statistics.median(rates[mode])
        plain = statistics.median(rates["plain"])
        print(f"in-process, 32 clients, {mode}: median {m:,.0f} /s, ratio {m / plain:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--in-process", action="store_true", help="no HTTP: the service itself")
    args = ap.parse_args()
    if args.in_process:
        in_process(args.seconds, args.rounds)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    rows: list[tuple[str, str, dict[str, float]]] = []
    ok = dict.fromkeys(KINDS, 0)
    witnesses = dict.fromkeys(KINDS, 0)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        site = make_data(tmp, seats=10, overdraft=0)
        server = ServerProcess(site.data, tmp / "server.log")
        server.start()
        try:
            url = server.url
            run(url, "witnessed", "warm", 3, args.connections, tmp)
            for i in range(args.rounds):
                for kind in KINDS:
                    name = f"{kind}-{i}"
                    before = sealed(url)
                    res = run(url, kind, name, args.seconds, args.connections, tmp)
                    rows.append((kind, name, res))
                    witnesses[kind] += sealed(url) - before
                    ok[kind] += int(res["requests"] - res["status_errors"])
            mismatches = httpx.get(f"{url}/v1/status", timeout=10).json()["witness"]["mismatches"]
        finally:
            server.stop()
    median = {k: statistics.median(r["rate"] for kk, _, r in rows if kk == k) for k in KINDS}
    base = {k: "plain-each" if k.endswith("-each") else "plain" for k in KINDS}
    print(
        f"server: `meterbox server run`, default settings, loopback; {os.cpu_count()} cores; "
        f"wrk 2 threads, {args.connections} keep-alive connections, {args.seconds} s rounds\n"
    )
    print("| round | durable usage records/s | p50 | p99 | non-2xx |")
    print("|---|---|---|---|---|")
    for _, name, r in rows:
        print(
            f"| {name} | {r['rate']:,.0f} | {r['p50_us'] / 1000:.1f} ms | "
            f"{r['p99_us'] / 1000:.1f} ms | {r['status_errors']:.0f} |"
        )
    print(
        "\n| kind | median records/s | ratio to its plain kind | WITNESS records per usage record |"
    )
    print("|---|---|---|---|")
    for k in KINDS:
        print(
            f"| {k} | {median[k]:,.0f} | {median[k] / median[base[k]]:.2f} | "
            f"{witnesses[k] / max(ok[k], 1):.2f} ({witnesses[k]:,} / {ok[k]:,}) |"
        )
    print(f"\nwitness mismatches: {mismatches}")


if __name__ == "__main__":
    main()
