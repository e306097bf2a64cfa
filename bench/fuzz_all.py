"""The full fuzz run: at least 100,000 generated inputs across every parser.

Two parts, both applying the rules of ``tests/support/fuzz.py`` (only
MeterboxError comes out, it says expected/found, each case time-bounded, refusals
change nothing):

1. a seeded mutation loop over real files (license, top-up, receipt, vendor bundle,
   report vectors) and over real request bodies (Cryptolens forms, JSON API bodies
   through the request models); fast, so it carries most of the count;
2. the hypothesis fuzz tests of ``tests/fuzz/`` with many more examples each
   (``METERBOX_FUZZ_EXAMPLES``), which also cover imports, the ledger's data files,
   and HTTP requests against the real app.

    .venv/bin/python bench/fuzz_all.py [--cases 100000] [--examples 1000] [--seed 1]

Prints cases per parser, cases per second and every failure; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The fuzz rules live in the tests' support package; the bench reuses them as they are.
sys.path.insert(0, str(ROOT / "tests"))

from pydantic import ValidationError  # noqa: E402

import support.fuzz as fz  # noqa: E402
from meterbox.compat.wire import CryptolensLimitsConfig, parse_form  # noqa: E402
from meterbox.server._app import CheckoutIn, LeaseIdIn, UsageIn  # noqa: E402

FORMS = [
    b"token=t&ProductId=3349&Key=ABCDE-FGHIJ-KLMNO-PQRST&MachineCode=NODE-1&Sign=True&SignMethod=1",
    b"token=t&ProductId=3349&Key=ABCDE-FGHIJ-KLMNO-PQRST&FloatingTimeInterval=300&MaxOverdraft=1",
    b"token=t&ProductId=3349&Key=ABCDE-FGHIJ-KLMNO-PQRST&Id=7&IntValue=5&EnableBound=true&Bound=20",
]
BODIES = [
    (UsageIn, b'{"meter":"runs","amount":3,"client_id":"host-1/pid-42","idempotency_key":"k1"}'),
    (CheckoutIn, b'{"feature":"cad","client_id":"host-1/pid-42","hostname":"h"}'),
    (LeaseIdIn, b'{"lease_id":"0123456789abcdef"}'),
]


def _form_case(data: bytes) -> None:
    def run() -> None:
        form = parse_form(data, CryptolensLimitsConfig())
        # Every typed accessor the service uses, on whatever the form holds.
        form.integer("ProductId", default=0)
        form.text("Key", max_chars=256)
        form.text("MachineCode", max_chars=512)
        form.integer("FloatingTimeInterval", default=0, high=30 * 86_400)
        form.integer("IntValue", default=0, high=2**63 - 1)
        form.integer("Bound", default=0, low=-(2**63 - 1), high=2**63 - 1)
        form.boolean("EnableBound")
        form.sign_method()
        form.friendly_name()

    fz.call_parser("cryptolens.form", run)


def _body_case(model: type, data: bytes) -> None:
    fz.CASES["api.body"] += 1
    with fz.time_bound("api.body"):
        details: list[object] = ["accepted"]
        try:
            model.model_validate_json(data)  # type: ignore[attr-defined]
        except ValidationError as exc:
            details = list(exc.errors())
    assert details, "a validation error without details"


def mutation_loop(total: int, seed: int, failures: list[str]) -> None:
    rnd = random.Random(seed)
    docs = [(p, p.read_bytes()) for p in fz.license_vector_files()]
    bundle, rotated = fz.license_bundle(), fz.rotated_bundle()
    bundles = [(fz.LICENSE_VECTORS / n).read_bytes() for n in ("vendor.pub", "vendor-rotated.pub")]
    reports = fz.report_cases()
    kinds = ["doc"] * 4 + ["bundle", "report", "report", "form", "form", "body", "body"]
    for i in range(total):
        kind = rnd.choice(kinds)
        try:
            if kind == "doc":
                path, original = rnd.choice(docs)
                fz.check_document(
                    fz.mutate(original, rnd),
                    rotated if i % 2 else bundle,
                    original=original if path.parent.name == "valid" else None,
                )
            elif kind == "bundle":
                fz.check_bundle(fz.mutate(rnd.choice(bundles), rnd))
            elif kind == "report":
                case = rnd.choice(reports)
                fz.check_report(case, fz.mutate(case.data, rnd))
            elif kind == "form":
                _form_case(fz.mutate(rnd.choice(FORMS), rnd))
            else:
                model, body = rnd.choice(BODIES)
                _body_case(model, fz.mutate(body, rnd))
        except AssertionError:
            failures.append(f"{kind} case {i} (seed {seed}): {traceback.format_exc(limit=3)}")
            if len(failures) > 50:
                return


def hypothesis_part(examples: int) -> tuple[int, str]:
    env = dict(os.environ, METERBOX_FUZZ_EXAMPLES=str(examples), METERBOX_FUZZ_COUNTS="1")
    counts = ROOT / ".fuzz-counts.json"
    env["METERBOX_FUZZ_COUNTS_FILE"] = str(counts)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
         "-o", "addopts=", "--timeout=3600"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    cases = 0
    if counts.exists():
        cases = sum(json.loads(counts.read_text()).values())
        counts.unlink()
    return cases, proc.stdout[-4000:] if proc.returncode else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000, help="mutation-loop cases")
    parser.add_argument("--examples", type=int, default=1000, help="hypothesis examples per test")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    failures: list[str] = []
    start = time.perf_counter()
    mutation_loop(args.cases, args.seed, failures)
    took = time.perf_counter() - start
    loop_cases = sum(fz.CASES.values())
    print(f"mutation loop: {args.cases} inputs, {loop_cases} parser calls in {took:.1f} s "
          f"({loop_cases / took:,.0f} calls/s)")  # fmt: skip
    for name, n in sorted(fz.CASES.items()):
        print(f"  {name:24} {n:>9,}")

    start = time.perf_counter()
    hyp_cases, hyp_failures = hypothesis_part(args.examples)
    took = time.perf_counter() - start
    print(f"hypothesis tests (tests/fuzz, {args.examples} examples each): {hyp_cases:,} parser "
          f"calls in {took:.1f} s ({hyp_cases / max(took, 1e-9):,.0f} calls/s)")  # fmt: skip
    print(f"total generated inputs: {args.cases + hyp_cases:,}")
    for f in failures:
        print("FAILURE:", f)
    if hyp_failures:
        print("FAILURES in tests/fuzz:\n" + hyp_failures)
    sys.exit(1 if failures or hyp_failures else 0)


if __name__ == "__main__":
    main()
