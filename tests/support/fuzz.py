"""Shared pieces of the parser fuzz tests and of ``bench/fuzz_all.py``.

Every parser that reads bytes from outside (a file the customer hands over, a request
body from the network) must, for any input:

- return normally or raise a :class:`meterbox.errors.MeterboxError` subclass (never a
  ``ValueError``, ``KeyError``, ``MemoryError``, ...);
- say what it expected and what it found, in a non-empty message;
- answer within :data:`CASE_SECONDS` (no hang, no quadratic blow-up);
- change nothing when it refuses the input.

The targets below take one input and apply those rules; the pytest files feed them
hypothesis strategies and mutations of real files, the bench feeds them far more.
``CASES`` counts the inputs each target saw, so the full run can print its totals.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from starlette.testclient import TestClient

from meterbox.errors import MeterboxError
from meterbox.server._runtime import BuiltServer

TESTS = Path(__file__).resolve().parent.parent
VECTORS = TESTS / "vectors"
LICENSE_VECTORS = VECTORS / "licenses"
LEDGER_VECTORS = VECTORS / "ledger"

#: Upper bound for one parser call. Generous for two busy cores; a hang or a
#: super-linear path on a 64 KiB input is far above it.
CASE_SECONDS = 2.0

#: Inputs seen per target, for the full run's report.
CASES: Counter[str] = Counter()


def assert_clean_error(exc: BaseException, where: str) -> None:
    """A refusal is a MeterboxError that says what was expected and what was found."""
    assert isinstance(exc, MeterboxError), (
        f"{where}: {type(exc).__name__} escaped instead of a MeterboxError: {exc!r}"
    )
    text = str(exc)
    assert text.strip(), f"{where}: empty error message"
    assert exc.expected, f"{where}: error says nothing about what was expected: {text}"
    assert exc.found, f"{where}: error says nothing about what was found: {text}"


@contextmanager
def time_bound(where: str, seconds: float = CASE_SECONDS) -> Iterator[None]:
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    assert took < seconds, f"{where}: one input took {took:.2f} s (bound {seconds} s)"


def call_parser(where: str, fn: Callable[[], Any]) -> tuple[Any, MeterboxError | None]:
    """Run one parser call under the time bound; return its value or its clean error."""
    CASES[where] += 1
    caught: BaseException | None = None
    with time_bound(where):
        try:
            value = fn()
        except Exception as exc:
            caught = exc
    if caught is None:
        return value, None
    assert_clean_error(caught, where)
    assert isinstance(caught, MeterboxError)
    return None, caught


# ----------------------------------------------------------------- mutation
def mutate(data: bytes, rnd: random.Random, rounds: int | None = None) -> bytes:
    """Apply 1-4 random edits: flip, set, insert, delete, duplicate, splice, truncate."""
    out = bytearray(data)
    for _ in range(rounds or rnd.randint(1, 4)):
        op = rnd.randrange(8)
        pos = rnd.randrange(len(out) + 1) if out else 0
        if op == 0 and out:
            i = min(pos, len(out) - 1)
            out[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and out:
            i = min(pos, len(out) - 1)
            out[i] = rnd.choice((0, 0xFF, 0x7F, 0x80, ord('"'), ord("{"), ord("\\"), ord("0")))
        elif op == 2:
            out[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 3 and out:
            end = min(len(out), pos + rnd.randint(1, 16))
            del out[pos:end]
        elif op == 4 and out:
            end = min(len(out), pos + rnd.randint(1, 64))
            out[pos:pos] = out[pos:end]
        elif op == 5:
            out = out[:pos]
        elif op == 6 and out:
            # Interesting integers where digits are: boundaries, huge, negative.
            token = rnd.choice((b"-1", b"0", b"9" * 30, b"1e999", b"2147483648", b"null", b"[]"))
            out[pos:pos] = token
        elif out:
            i = min(pos, len(out) - 1)
            out[i] = (out[i] + rnd.choice((1, -1))) % 256
    return bytes(out)


def mutations(data: bytes, seed: int, n: int) -> Iterator[bytes]:
    rnd = random.Random(seed)
    for _ in range(n):
        m = mutate(data, rnd)
        if m != data:
            yield m


# ------------------------------------------------------------ signed documents
def license_vector_files() -> list[Path]:
    return sorted((LICENSE_VECTORS / "valid").glob("*")) + sorted(
        (LICENSE_VECTORS / "invalid").glob("*")
    )


def license_bundle() -> Any:
    from meterbox.licenses import VendorPublicBundle

    return VendorPublicBundle.from_bytes((LICENSE_VECTORS / "vendor.pub").read_bytes())


def rotated_bundle() -> Any:
    from meterbox.licenses import VendorPublicBundle

    return VendorPublicBundle.from_bytes((LICENSE_VECTORS / "vendor-rotated.pub").read_bytes())


def check_document(data: bytes, bundle: Any, original: bytes | None = None) -> None:
    """``open_document`` and each typed parser accept or refuse ``data`` cleanly.

    A signed document is canonical bytes under an Ed25519 signature, so a changed copy
    of a valid file must never verify.
    """
    from meterbox.licenses import License, Receipt, Topup, open_document

    doc, _ = call_parser("document", lambda: open_document(data, bundle))
    if original is not None and data != original:
        assert doc is None, "a changed signed document verified"
    parsers: dict[str, Callable[[], Any]] = {
        "document.license": lambda: License.from_bytes(data, bundle),
        "document.topup": lambda: Topup.from_bytes(data, bundle),
        "document.receipt": lambda: Receipt.from_bytes(data, bundle),
    }
    for where, parse in parsers.items():
        call_parser(where, parse)


def check_bundle(data: bytes) -> None:
    from meterbox.licenses import VendorPublicBundle

    call_parser("vendor.pub", lambda: VendorPublicBundle.from_bytes(data))


# ------------------------------------------------------------------ reports
@dataclass(frozen=True)
class ReportCase:
    name: str
    data: bytes
    keys: dict[bytes, Any]
    known: Any


def report_cases() -> list[ReportCase]:
    from meterbox.crypto import x25519_private_from_raw
    from meterbox.ledger import ChainState, Head, Known

    spec = json.loads((LEDGER_VECTORS / "vendor_key.json").read_bytes())["vendor"]
    keys = {
        bytes.fromhex(spec["key_id"]): x25519_private_from_raw(
            bytes.fromhex(spec["x25519_private"])
        )
    }
    out = []
    for path in sorted((LEDGER_VECTORS / "valid").glob("*.json")):
        case = json.loads(path.read_bytes())
        known = None
        k = case.get("known")
        if k is not None:
            chain = k["chain"]
            known = Known(
                head=Head(k["head"]["seq"], bytes.fromhex(k["head"]["hash"])),
                chain=None
                if chain is None
                else ChainState(chain["epoch"], bytes.fromhex(chain["key"])),
                instance_key=None
                if k["instance_key"] is None
                else bytes.fromhex(k["instance_key"]),
            )
        data = (path.parent / case["report"]).read_bytes()
        out.append(ReportCase(path.stem, data, keys, known))
    return out


def check_report(case: ReportCase, data: bytes) -> None:
    """Verification returns findings (never raises); a changed report is critical."""
    from meterbox.ledger import ReportVerifier

    def run() -> Any:
        verifier = ReportVerifier(case.keys, known=case.known)
        records = sum(1 for _ in verifier.records(io.BytesIO(data)))
        return verifier.result, records

    value, _ = call_parser("report", run)
    if value is not None and data != case.data:
        result, _records = value
        assert result.critical, (
            f"a changed report {case.name} verified without a critical finding: "
            f"{sorted(result.codes)}"
        )
        for finding in result.findings:
            assert finding.message.strip(), "a finding without a message"


# ------------------------------------------------------------ site builder
KEY = "ABCDE-FGHIJ-KLMNO-PQRST"
PRODUCT = 3349


@dataclass
class Site:
    """A vendor home and a set-up server data directory with one license."""

    home: Path
    data: Path
    keys: Any
    license: Any
    license_bytes: bytes
    admin_token: str


def make_site(
    tmp: Path,
    *,
    seats: int = 2,
    meter_limit: int | None = 1000,
    license_id: str = "lic-fuzz",
    lease_seconds: int = 60,
) -> Site:
    from meterbox.licenses import CryptolensSection, DataObject, Feature, License, Meter
    from meterbox.server._instance import init_server
    from meterbox.vendorkit import keys as vendor_keys

    home = tmp / "vendor"
    data = tmp / "server"
    keys = vendor_keys.init(home)
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    lic = License(
        license_id=license_id,
        customer="ACME Labs",
        product="Solver",
        issued=issued,
        vendor_key_id=keys.current_id.hex(),
        features={"cad": Feature(seats=seats, overdraft=0, lease_seconds=lease_seconds)},
        meters={"runs": Meter(limit=meter_limit)},
        expires=issued + timedelta(days=365),
        cryptolens=CryptolensSection(
            product_id=PRODUCT,
            key=KEY,
            feature="cad",
            allowed_machines=("NODE-1",),
            data_objects=(DataObject(7, "usage", "runs", "", 0),),
        ),
    )
    blob = lic.sign(keys.signer())
    lic_file = tmp / "site.lic"
    lic_file.write_bytes(blob)
    init_server(data, vendor_pub=home / "vendor.pub", license_files=[lic_file], fingerprint="x")
    token = (data / "admin.token").read_text().strip()
    return Site(home, data, keys, lic, blob, token)


def tree_digest(root: Path, *, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Path -> SHA-256 of every file under ``root`` (names in ``skip`` left out)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in skip:
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_async(coro: Any) -> Any:
    return asyncio.run(coro)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def fuzz_settings(weight: float = 1.0) -> settings:
    """Hypothesis settings for one fuzz test: CI-sized unless METERBOX_FUZZ_EXAMPLES says more.

    ``deadline`` is off because two busy cores make hypothesis' own per-example deadline
    flaky; :func:`time_bound` asserts the bound instead, and pytest-timeout catches a hang.
    """

    base = env_int("METERBOX_FUZZ_EXAMPLES", 60)
    return settings(
        max_examples=max(1, int(base * weight)),
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
        derandomize=os.environ.get("METERBOX_FUZZ_RANDOM") is None,
        database=None,
    )


class Served:
    """The real app (engine, ledger, state store, Cryptolens API) behind a test client."""

    def __init__(self, site: Site, built: BuiltServer, client: TestClient) -> None:
        self.site = site
        self.built = built
        self.client = client

    def state(self) -> tuple[object, ...]:
        service = self.built.instance.service
        now = service.now()
        crypto_db = self.site.data / "cryptolens.db"
        return (
            service.ledger_head(),
            [(b["meter"], b["used"], b["limit"]) for b in service.engine.balances(now)],
            [
                (f["feature"], f["in_use"], sorted(x.lease_id for x in f["leases"]))
                for f in service.engine.seats_view(now)
            ],
            hashlib.sha256(crypto_db.read_bytes()).hexdigest() if crypto_db.exists() else None,
            sorted(p.name for p in (self.site.data / "licenses").iterdir()),
        )
