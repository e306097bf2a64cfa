"""Software TPMs for the tests: Debian's ``swtpm`` on free loopback ports.

:class:`Swtpm` runs ``swtpm socket --tpm2 --tpmstate dir=<dir> --server port=P
--ctrl port=P+1 --flags not-need-init,startup-clear`` and stops it; the same state
directory started again is the same TPM (its NV counters and seeds survive), another
directory is another TPM. The class has no pytest dependency so bench/tpm_bench.py and
tests/vectors/tpm/capture.py use it too.

Fixtures: ``swtpm_factory`` (function scope) starts as many TPMs as a test wants and
stops them all afterwards; ``swtpm`` is one of them, started. A missing ``swtpm``
binary fails the test: a TPM test that silently skips would hide a broken environment.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_START_TIMEOUT_S = 10.0


def _port_pair() -> int:
    """A port P with P and P+1 both free on 127.0.0.1 (server and control channel)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two adjacent free ports on 127.0.0.1")


class SwtpmMissing(RuntimeError):
    pass


class Swtpm:
    """One swtpm process over a state directory; ``tcti`` addresses it."""

    def __init__(self, state_dir: Path) -> None:
        if shutil.which("swtpm") is None:
            raise SwtpmMissing(
                "swtpm is not on PATH. Expected Debian's swtpm (with swtpm-tools and "
                "tpm2-tools). Install them with scripts/install-system-deps.sh."
            )
        self.state_dir = state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> Swtpm:
        self.port = _port_pair()
        log = open(self.state_dir / "swtpm.log", "ab")  # noqa: SIM115  (closed in stop)
        self._log = log
        self._proc = subprocess.Popen(
            [
                "swtpm", "socket", "--tpm2",
                "--tpmstate", f"dir={self.state_dir}",
                "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
                "--ctrl", f"type=tcp,port={self.port + 1},bindaddr=127.0.0.1",
                "--flags", "not-need-init,startup-clear",
            ],
            stdout=log,
            stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"swtpm exited with {self._proc.returncode}; log: "
                    + (self.state_dir / "swtpm.log").read_text(errors="replace")[-2000:]
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                time.sleep(0.02)
                continue
            return self
        self.stop()
        raise RuntimeError(f"swtpm did not listen on port {self.port} within {_START_TIMEOUT_S}s")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()

    def restart(self) -> Swtpm:
        self.stop()
        return self.start()


def manufacture_with_ek_cert(state_dir: Path, ca_dir: Path) -> list[Path]:
    """Give a new TPM state an RSA EK certificate from a local CA, as a vendor would.

    Runs ``swtpm_setup --create-ek-cert`` with a private ``swtpm_localca`` configuration,
    so the CA lives in ``ca_dir`` and not in /var/lib. Returns the CA certificates
    (issuer, root) that the EK certificate chains to.
    """
    if shutil.which("swtpm_setup") is None:
        raise SwtpmMissing(
            "swtpm_setup is not on PATH. Install swtpm-tools with scripts/install-system-deps.sh."
        )
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_dir.mkdir(parents=True, exist_ok=True)
    localca = ca_dir / "swtpm-localca.conf"
    localca.write_text(
        f"statedir = {ca_dir}\nsigningkey = {ca_dir}/signkey.pem\n"
        f"issuercert = {ca_dir}/issuercert.pem\ncertserial = {ca_dir}/certserial\n"
    )
    options = ca_dir / "swtpm-localca.options"
    options.write_text("--platform-manufacturer meterbox-tests\n")
    setup = ca_dir / "swtpm_setup.conf"
    setup.write_text(
        "create_certs_tool = swtpm_localca\n"
        f"create_certs_tool_config = {localca}\ncreate_certs_tool_options = {options}\n"
        "active_pcr_banks = sha256\n"
    )
    proc = subprocess.run(
        [
            "swtpm_setup", "--tpm2", "--tpmstate", str(state_dir), "--config", str(setup),
            "--create-ek-cert", "--overwrite",
        ],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"swtpm_setup failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return [ca_dir / "issuercert.pem", ca_dir / "swtpm-localca-rootca-cert.pem"]


class SwtpmFactory:
    def __init__(self, base: Path) -> None:
        self._base = base
        self._all: list[Swtpm] = []

    def __call__(self, state_dir: Path | None = None) -> Swtpm:
        tpm = Swtpm(state_dir or self._base / f"tpm{len(self._all)}")
        self._all.append(tpm)
        return tpm.start()

    def stop_all(self) -> None:
        for tpm in self._all:
            tpm.stop()


@pytest.fixture
def swtpm_factory() -> Iterator[SwtpmFactory]:
    base = Path(tempfile.mkdtemp(prefix="meterbox-swtpm-"))
    factory = SwtpmFactory(base)
    try:
        yield factory
    finally:
        factory.stop_all()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def swtpm(swtpm_factory: SwtpmFactory) -> Swtpm:
    try:
        return swtpm_factory()
    except SwtpmMissing as exc:
        pytest.fail(str(exc), pytrace=False)
