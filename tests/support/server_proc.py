"""A real `meterbox server run` subprocess on loopback, for crash and disk-full tests.

No tests of its own. :func:`make_data` builds a vendor home, signs one license and
initialises a server data directory; :class:`ServerProcess` starts the server on a
free port, waits for ``/healthz``, and stops it gracefully or with SIGKILL.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from meterbox.ledger import Record, ReportResult, ReportVerifier
from meterbox.licenses import Feature, License, Meter
from meterbox.server._instance import init_server
from meterbox.tpm import DEFAULT_TCTI, TpmMode
from meterbox.vendorkit import keys as vendor_keys

LICENSE_ID = "lic-site"


@dataclass(frozen=True)
class Data:
    home: Path
    data: Path
    token: str

    def verify(self, report: bytes) -> tuple[list[Record], ReportResult]:
        """Every authentic record of ``report`` and the verifier's result."""
        keys = vendor_keys.VendorKeys.load(self.home)
        verifier = ReportVerifier({kid: keys.ledger_private(kid) for kid in keys.pairs})
        records = [r for r, _ in verifier.records(io.BytesIO(report))]
        return records, verifier.result


def make_data(
    root: Path,
    data: Path | None = None,
    *,
    seats: int = 3,
    overdraft: int = 1,
    meter_limit: int | None = None,
    tpm_tcti: str | None = None,
    require_tpm: bool = False,
    report_every_days: int | None = None,
    expires_in: timedelta = timedelta(days=365),
    extra_features: tuple[str, ...] = (),
    max_borrow_hours: int = 0,
) -> Data:
    """A vendor home under ``root`` and a server data dir (``data`` or ``root/server``).

    With ``tpm_tcti`` the server is initialised with ``--tpm require`` on that TPM.
    """
    home = root / "vendor"
    data = data or root / "server"
    keys = vendor_keys.init(home)
    issued = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    lic = License(
        license_id=LICENSE_ID,
        customer="ACME Labs",
        product="Solver",
        issued=issued,
        vendor_key_id=keys.current_id.hex(),
        features={
            name: Feature(seats=seats, overdraft=overdraft, lease_seconds=60)
            for name in ("cad", *extra_features)
        },
        meters={"runs": Meter(limit=meter_limit)},
        expires=issued + expires_in,
        require_tpm=require_tpm,
        report_every_days=report_every_days,
        max_borrow_hours=max_borrow_hours,
    )
    lic_file = root / "site.lic"
    lic_file.write_bytes(lic.sign(keys.signer()))
    init_server(
        data,
        vendor_pub=home / "vendor.pub",
        license_files=[lic_file],
        fingerprint="x",
        tpm=TpmMode.OFF if tpm_tcti is None else TpmMode.REQUIRE,
        tpm_tcti=tpm_tcti or DEFAULT_TCTI,
    )
    return Data(home, data, (data / "admin.token").read_text().strip())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m meterbox server run --data D --port P`, output appended to ``log``."""

    def __init__(
        self,
        data: Path,
        log: Path,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        *,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data, self.log = data, log
        #: Extra options of `server run`, e.g. ("--host", "0.0.0.0"); a later --log-level
        #: wins over the default one.
        self.args = (*extra, *args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> None:
        args = [sys.executable, "-m", "meterbox", "server", "run", "--data", str(self.data),
                "--port", str(self.port), "--log-level", "warning", *self.args]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "server did not start: " + self.tail()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
