"""`server tpm reenrol` killed with SIGKILL at each step, then run again or opened.

Each cut point is a real ``kill -9`` of a child process running the real CLI on a real
swtpm: the child replaces one step of :func:`meterbox.server._tpm.reenrol_tpm` (or of
:func:`prepare_reenrolment`) with a kill of itself, so everything before that step is on
disk and nothing of it or after it is. Afterwards the ledger must hold exactly one
TPM_REENROLLED, tpm.json must name the new TPM, no re-enrolment note may be left, and the
vendor must see the move as one warning (tpm.reenrolled) with a good quote.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterbox.ledger import RecordType, ReportVerifier
from meterbox.licenses import License
from meterbox.server._instance import ServerInstance
from meterbox.server._tpm import REENROL_INTENT, read_tpm_config
from meterbox.server.cli import app as server_app
from meterbox.vendorkit import IngestOutcome, VendorStore, ingest_report
from meterbox.vendorkit import keys as vendor_keys
from support.crash import Vendor
from support.server_proc import Data, make_data
from support.tpm import SwtpmFactory

runner = CliRunner()

#: (cut point, the function the child replaces with a kill, whether the record is sealed).
CUTS = [
    ("before-counter", "prepare_tpm", False),
    ("before-full-intent", "_write_intent:config", False),
    ("before-record", "_seal_reenrolment", False),
    ("before-tpm-json", "_write_config", True),
    ("before-note", "_write_reenrol_note", True),
    ("before-intent-dropped", "_drop_intent", True),
]

_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from meterbox.server import _tpm

    name = sys.argv[1]
    target, _, when = name.partition(":")
    original = getattr(_tpm, target)

    def cut(*args, **kwargs):
        if when == "config" and args[1].config is None:
            return original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(_tpm, target, cut)
    from meterbox.server.cli import app
    app(sys.argv[2:])
    """
)


def _kill_during_reenrol(data: Path, tcti: str, step: str) -> None:
    args = ["tpm", "reenrol", "--data", str(data), "--tpm-tcti", tcti, "--reason", "new host"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERBOX_")}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, step, *args],
        check=False,
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def _reenrol(data: Path, tcti: str) -> tuple[int, str]:
    args = ["tpm", "reenrol", "--data", str(data), "--tpm-tcti", tcti, "--reason", "new host"]
    result = runner.invoke(server_app, args)
    return result.exit_code, result.output


def _report(data: Data, root: Path, n: int) -> tuple[bytes, IngestOutcome]:
    inst = ServerInstance.open(data.data)
    try:
        blob = inst.export_bytes()
    finally:
        inst.close()
    path = root / f"report-{n}.mbr"
    path.write_bytes(blob)
    return blob, ingest_report(data.home, path)


def _reenrolled_records(data: Data, report: bytes) -> list[dict[str, object]]:
    verifier = ReportVerifier(Vendor(data.home, ()).ledger_keys())
    return [
        dict(r.payload)
        for r, _ in verifier.records(io.BytesIO(report))
        if r.type == RecordType.TPM_REENROLLED
    ]


def _site(root: Path, tcti: str) -> Data:
    data = make_data(root, tpm_tcti=tcti, require_tpm=True)
    document = (root / "site.lic").read_bytes()
    bundle = vendor_keys.VendorKeys.load(data.home).bundle
    with VendorStore.open(None, home=data.home) as store:
        store.add_license(License.from_bytes(document, bundle), document)
    return data


def _round_trip(data: Data, root: Path) -> None:
    _, outcome = _report(data, root, 0)
    assert outcome.accepted, outcome.to_json()
    assert outcome.receipt_path is not None
    inst = ServerInstance.open(data.data)
    try:
        asyncio.run(inst.import_bytes(outcome.receipt_path.read_bytes()))
    finally:
        inst.close()


#: After a cut the operator runs the command again; once the record is sealed, the
#: next open of the server finishes the move by itself as well.
CASES = [
    pytest.param(step, sealed, then, id=f"{cut}-then-{then}")
    for cut, step, sealed in CUTS
    for then in (("rerun", "open") if sealed else ("rerun",))
]


@pytest.mark.parametrize(("step", "sealed", "then"), CASES)
def test_reenrolment_killed_at_each_step_is_sealed_once(
    tmp_path: Path, swtpm_factory: SwtpmFactory, step: str, sealed: bool, then: str
) -> None:
    old, new = swtpm_factory(), swtpm_factory()
    data = _site(tmp_path, old.tcti)
    _round_trip(data, tmp_path)
    old_ek = read_tpm_config(data.data)["identity"]["ek_name"]  # type: ignore[index]
    old.stop()  # the mainboard is gone
    _kill_during_reenrol(data.data, new.tcti, step)
    if then == "rerun":
        # Without a sealed record only a run of the command can move the instance; it
        # adopts the counter the killed run may have defined (its authValue is noted).
        code, output = _reenrol(data.data, new.tcti)
        assert code == 0, output
        if sealed:
            assert "Finished the re-enrolment" in output, output
        else:
            assert "Re-enrolled on the TPM" in output, output
    blob, outcome = _report(data, tmp_path, 1)
    config = read_tpm_config(data.data)
    assert config is not None
    identity = config["identity"]
    assert isinstance(identity, dict)
    assert identity["ek_name"] != old_ek
    assert not (data.data / REENROL_INTENT).exists()
    records = _reenrolled_records(data, blob)
    assert len(records) == 1, records
    assert records[0]["ne"] == identity["ek_name"]
    codes = {f.code: f.severity for f in outcome.findings if f.severity != "info"}
    assert codes == {"tpm.reenrolled": "warning"}, outcome.to_json()
    assert {f.code for f in outcome.findings if f.code.startswith("tpm.quote")} == {"tpm.quote.ok"}
