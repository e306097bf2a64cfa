"""What the TPM anchor costs the running server: advances, durable appends and HTTP usage.

Each configuration gets a fresh data directory (one license, unlimited meter ``runs``)
and, where it has a TPM, a fresh swtpm process (TCP on 127.0.0.1):

1. one whole advance as the server makes it (note ``pending``, NV_Increment, NV_Read,
   TPM_ANCHOR record made durable, note ``committed``), per second, in process;
2. durable usage appends per second through the license service (in process, 64
   concurrent callers, each record durable before its call returns), without a TPM,
   with the TPM at the default activity interval (60 s) and at 1 s;
3. HTTP ``/v1/usage`` per second against the real ``meterbox server run`` process,
   ``wrk`` with 32 keep-alive connections, the same three configurations.

swtpm is far faster per NV write than a discrete TPM (see bench/tpm_bench.py), so the
advance figure is an upper bound; the throughput figures barely depend on it, because
activity advances run beside the request path at most once per interval.

Needs ``swtpm`` and ``wrk``. Run:

    .venv/bin/python bench/tpm_server_bench.py [--seconds 10] [--advances 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from http_bench import run_wrk  # noqa: E402
from meterbox.server._instance import ServerInstance  # noqa: E402
from support.server_proc import ServerProcess, make_data  # noqa: E402
from support.tpm import Swtpm  # noqa: E402

CONFIGS = (("no TPM", None), ("TPM, advance every 60 s", 60.0), ("TPM, advance every 1 s", 1.0))


def _site(work: Path, name: str, every: float | None) -> tuple[Path, Swtpm | None]:
    tpm = None if every is None else Swtpm(work / f"{name}-tpm").start()
    site = make_data(work / name, tpm_tcti=None if tpm is None else tpm.tcti, seats=1000)
    if every is not None:
        path = site.data / "tpm.json"
        config = json.loads(path.read_text())
        config["advance_every_s"] = every
        path.write_text(json.dumps(config))
    return site.data, tpm


def advances(work: Path, n: int) -> float:
    data, tpm = _site(work, "advance", 60.0)
    assert tpm is not None
    inst = ServerInstance.open(data)
    try:
        assert inst.tpm is not None
        start = time.perf_counter()
        for _ in range(n):
            inst.tpm.advance("bench")
        return n / (time.perf_counter() - start)
    finally:
        inst.close()
        tpm.stop()


def appends(work: Path, name: str, every: float | None, seconds: float) -> tuple[float, int]:
    data, tpm = _site(work, name, every)
    inst = ServerInstance.open(data)

    async def load() -> int:
        done = 0
        stop = time.monotonic() + seconds

        async def caller(c: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < stop:
                i += 1
                await inst.service.usage("runs", 1, f"c{c}", f"{c}-{i}")
                done += 1

        await asyncio.gather(*(caller(c) for c in range(64)))
        return done

    try:
        start = time.perf_counter()
        done = asyncio.run(load())
        rate = done / (time.perf_counter() - start)
        return rate, 0 if inst.tpm is None else inst.tpm.advances
    finally:
        inst.close()
        if tpm is not None:
            tpm.stop()


def http(work: Path, name: str, every: float | None, seconds: int) -> float:
    data, tpm = _site(work, f"http-{name}", every)
    server = ServerProcess(data, work / f"{name}.log")
    server.start()
    try:
        run_wrk(server.url, "/v1/usage", "usage", 2, 32, work)  # warm-up
        return run_wrk(server.url, "/v1/usage", "usage", seconds, 32, work)["rate"]
    finally:
        server.stop()
        if tpm is not None:
            tpm.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--advances", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterbox-tpm-server-bench-") as tmp:
        work = Path(tmp)
        rate = advances(work, args.advances)
        print(f"whole advance: {rate:,.0f}/s, {1000 / rate:.2f} ms each\n")
        print("| configuration | durable appends/s (service) | advances | HTTP usage/s (wrk) |")
        print("|---|---|---|---|")
        for i, (label, every) in enumerate(CONFIGS):
            app_rate, n = appends(work, f"svc{i}", every, args.seconds)
            http_rate = http(work, f"h{i}", every, args.seconds)
            print(f"| {label} | {app_rate:,.0f} | {n} | {http_rate:,.0f} |")


if __name__ == "__main__":
    main()
