"""What the per-batch key ratchet costs: the ledger before and after it, in one run.

The "before" code is ``git archive``-d from ``--base-ref`` (the commit before record
version 2) into a temporary tree; "after" is this checkout's ``src``. Each figure runs
in a fresh subprocess per tree, the two trees alternating round by round, so a machine
that gets busier affects both alike; the table gives the median of each and the ratio
after/before of the medians.

Figures:
- durable appends/s with group commit: ``--durable`` records submitted at once in
  chunks of 50,000, each acknowledged only once its batch is durable (target >= 30,000);
- durable appends/s one at a time: each append waits for its own batch, so every
  record pays the batch's syncs (the ratchet's worst case: one key state write each);
- how the key state is made durable: writes/s in place in two checksummed slots
  (one fdatasync) against atomic replacement of the file (two syncs and a rename);
- verify + decrypt records/s of a report of ``--verify`` group-committed records
  (target >= 200,000), and of a report whose every record is a batch of its own (the
  verifier's worst case: one batch key step and one seal per record).

Run: .venv/bin/python bench/ratchet_bench.py [--base-ref main] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PAYLOAD = {
    "m": "solver-runs",
    "a": 3,
    "c": "workstation-17",
    "k": "9f86d081884c7d659a2feaa0c55ad015",
    "l": "lic_0123456789abcdef",
}


# ------------------------------------------------------------------ worker side
def _key_state_writes(kind: str, n: int, workdir: Path) -> float:
    """Key state writes per second: in place in two slots, or by atomic replacement."""
    from meterbox._fs import atomic_write
    from meterbox.ledger import _keystate
    from meterbox.ledger._keystate import KeyState, KeyStateFile

    state = KeyState(0, 1, 2, 3, bytes(32), bytes(32), bytes(32), bytes(32))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        _keystate.create(d, "chain.key", state)
        t = time.perf_counter()
        if kind == "ks-slots":
            f = KeyStateFile.open(d, "chain.key")
            for _ in range(n):
                f.write(state)
            f.close()
        else:
            for _ in range(n):
                atomic_write(d / "chain.key", state.pack() + bytes(_keystate.SLOT_LEN))
        return n / (time.perf_counter() - t)


def _worker(kind: str, n: int, workdir: Path) -> float:
    if kind.startswith("ks-"):
        return _key_state_writes(kind, n, workdir)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from meterbox.clock import SystemClock
    from meterbox.crypto import key_id, x25519_raw_public
    from meterbox.ledger import LedgerWriter, RecordType, ReportVerifier, export_report

    vendor = X25519PrivateKey.generate()
    vid = key_id(x25519_raw_public(vendor.public_key()))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        writer = LedgerWriter.create(
            Path(tmp) / "l",
            vendor_ledger_key=vendor.public_key(),
            vendor_key_id=vid,
            clock=SystemClock(),
        )

        def fill(count: int) -> None:
            done = 0
            while done < count:
                k = min(50_000, count - done)
                for f in [writer.submit(RecordType.USAGE, PAYLOAD) for _ in range(k)]:
                    f.result()
                done += k

        if kind == "durable":
            t = time.perf_counter()
            fill(n)
            rate = n / (time.perf_counter() - t)
            writer.close()
            return rate
        if kind == "sequential":
            t = time.perf_counter()
            for _ in range(n):
                writer.append(RecordType.USAGE, PAYLOAD)
            rate = n / (time.perf_counter() - t)
            writer.close()
            return rate
        if kind == "verify":
            fill(n)
        else:  # verify-singles
            for _ in range(n):
                writer.append(RecordType.USAGE, PAYLOAD)
        report = Path(tmp) / "r.mbr"
        with report.open("wb") as f:
            export_report(writer, f, clock=SystemClock(), licenses=[], acked=None)
        writer.close()
        t = time.perf_counter()
        with report.open("rb") as f:
            result = ReportVerifier({vid: vendor}).verify(f)
        elapsed = time.perf_counter() - t
        assert not result.findings, result.findings[:3]
        return result.records / elapsed


# ------------------------------------------------------------------ driver side
def _tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _run(src: Path, kind: str, n: int, workdir: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    cmd += ["--n", str(n), "--workdir", str(workdir)]
    out = subprocess.run(
        cmd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-ref", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--durable", type=int, default=100_000)
    parser.add_argument("--sequential", type=int, default=2_000)
    parser.add_argument("--verify", type=int, default=300_000)
    parser.add_argument("--verify-singles", type=int, default=5_000)
    parser.add_argument("--key-states", type=int, default=2_000)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--worker")
    parser.add_argument("--n", type=int)
    args = parser.parse_args()
    if args.worker:
        print(_worker(args.worker, args.n, args.workdir))
        return
    figures = [
        ("durable appends/s, group commit", "durable", args.durable, ">= 30,000"),
        ("durable appends/s, one at a time", "sequential", args.sequential, ""),
        ("verify + decrypt records/s", "verify", args.verify, ">= 200,000"),
        ("verify + decrypt records/s, one record per batch", "verify-singles",
         args.verify_singles, ""),
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        before_src = _tree(args.base_ref, Path(tmp))
        after_src = REPO / "src"
        print(f"before: {args.base_ref}; after: this checkout; {args.rounds} rounds, medians")
        print()
        print("| figure | before | after | after / before | target |")
        print("|---|---|---|---|---|")
        for label, kind, n, target in figures:
            before, after = [], []
            for _ in range(args.rounds):
                before.append(_run(before_src, kind, n, args.workdir))
                after.append(_run(after_src, kind, n, args.workdir))
            b, a = statistics.median(before), statistics.median(after)
            print(f"| {label} ({n:,} records) | {b:,.0f} | {a:,.0f} | {a / b:.2f} | {target} |")
        # How to write the key state durably per batch (both with this checkout's code).
        print()
        print("| key state write, per batch | writes/s (median) |")
        print("|---|---|")
        for label, kind in (("two slots in place: pwrite + fdatasync", "ks-slots"),
                            ("atomic replace: write + fsync + rename + fsync(dir)",
                             "ks-rename")):  # fmt: skip
            rates = [_run(after_src, kind, args.key_states, args.workdir)
                     for _ in range(args.rounds)]  # fmt: skip
            print(f"| {label} | {statistics.median(rates):,.0f} |")


if __name__ == "__main__":
    main()
