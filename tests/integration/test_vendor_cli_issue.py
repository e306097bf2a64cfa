"""`meterbox vendor` init, issue, topup and licenses, in-process and as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import meterbox
from meterbox.cli import app
from meterbox.licenses import License, Topup, VendorPublicBundle
from meterbox.vendorkit import VendorStore

runner = CliRunner()


def _run(*args: str, columns: int = 80) -> tuple[int, str]:
    result = runner.invoke(app, ["vendor", *args], env={"COLUMNS": str(columns)})
    return result.exit_code, result.output


@pytest.fixture
def home(tmp_path: Path) -> Path:
    code, out = _run("init", "--home", str(tmp_path / "v"))
    assert code == 0, out
    return tmp_path / "v"


def _bundle(home: Path) -> VendorPublicBundle:
    return VendorPublicBundle.from_bytes((home / "vendor.pub").read_bytes())


def test_issue_writes_a_verifiable_license_and_records_it(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "acme.lic"
    code, text = _run(
        "issue", "--home", str(home), "--customer", "ACME", "--product", "Solver",
        "--seats", "cad=5+2", "--seats", "viewer=10", "--lease", "120",
        "--meter", "runs=1000/month", "--meter", "exports=unlimited",
        "--meter-overlimit", "runs=allow", "--expires", "2999-01-01",
        "--report-every", "30", "--grace", "7", "--site", "site-1",
        "--cryptolens-product-id", "77", "--cryptolens-feature", "cad",
        "--cryptolens-data-object", "1:usagecount:runs", "--cryptolens-machine", "M-1",
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    lic = License.from_bytes(out.read_bytes(), _bundle(home))
    assert lic.license_id in text
    assert (lic.features["cad"].seats, lic.features["cad"].overdraft) == (5, 2)
    assert lic.features["viewer"].lease_seconds == 120
    assert lic.meters["runs"].period == "month"
    assert lic.meters["runs"].over_limit == "allow"
    assert lic.meters["exports"].limit is None
    assert lic.expires is not None
    assert lic.expires.isoformat() == "2999-01-01T00:00:00+00:00"
    assert (lic.report_every_days, lic.grace_days, lic.site_fingerprint) == (30, 7, "site-1")
    assert lic.cryptolens is not None
    assert lic.cryptolens.product_id == 77
    assert lic.cryptolens.data_objects[0].meter == "runs"
    assert lic.cryptolens.allowed_machines == ("M-1",)
    with VendorStore.open(home=home) as db:
        row = db.get_license(lic.license_id)
    assert row is not None
    assert row.document == out.read_bytes()


def test_issue_sets_every_cryptolens_field_and_shows_the_product_id_and_key(
    home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "node.lic"
    code, text = _run(
        "issue", "--home", str(home), "--customer", "ACME", "--product", "Solver",
        "--meter", "credits=1000", "--meter", "runs=unlimited",
        "--cryptolens-product-id", "3349", "--cryptolens-key", "ABCDE-FGHIJ-KLMNO-PQRST",
        "--cryptolens-max-machines", "5", "--cryptolens-flag", "1", "--cryptolens-flag", "3",
        "--cryptolens-notes", "site A", "--cryptolens-trial", "--cryptolens-no-deactivation",
        "--cryptolens-data-object", "1:usage:runs:10:label",
        "--cryptolens-credit", "2:credits:credits:100",
        "--cryptolens-features-template", '["f1",["f2",["voice","image"]]]',
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    assert "Cryptolens product id 3349, key ABCDE-FGHIJ-KLMNO-PQRST" in text
    lic = License.from_bytes(out.read_bytes(), _bundle(home))
    assert lic.format_version == 2
    section = lic.cryptolens
    assert section is not None
    assert section.max_machines == 5
    assert section.flags == (True, False, True, False, False, False, False, False)
    assert (section.notes, section.trial_activation, section.block) == ("site A", True, False)
    assert section.allow_deactivation is False
    assert [(o.id, o.name, o.meter, o.int_value, o.string_value, o.charge)
            for o in section.data_objects] == [
        (1, "usage", "runs", 10, "label", "increment"),
        (2, "credits", "credits", 100, "", "decrement"),
        (3, "cryptolens_features", None, 0, '["f1",["f2",["voice","image"]]]', "increment"),
    ]  # fmt: skip
    # Nine columns are read on a wide terminal; test_cli_80_columns covers the narrow one.
    code, text = _run("licenses", "--home", str(home), columns=200)
    assert code == 0, text
    assert "cryptolens" in text
    assert "3349 ABCDE-FGHIJ-KLMNO-PQRST" in text


def test_a_random_cryptolens_key_is_shown_when_issued(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "k.lic"
    code, text = _run(
        "issue", "--home", str(home), "--customer", "C", "--product", "P",
        "--seats", "cad=2", "--cryptolens-product-id", "9", "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    lic = License.from_bytes(out.read_bytes(), _bundle(home))
    assert lic.cryptolens is not None
    assert lic.format_version == 1
    assert f"key {lic.cryptolens.key}" in text


def test_topup_and_listing(home: Path, tmp_path: Path) -> None:
    lic_file = tmp_path / "l.lic"
    args = ["--customer", "Beta", "--product", "P", "--meter", "runs=10", "-o", str(lic_file)]
    assert _run("issue", "--home", str(home), *args)[0] == 0
    lic = License.from_bytes(lic_file.read_bytes(), _bundle(home))
    top_file = tmp_path / "t.top"
    code, text = _run(
        "topup", "--home", str(home), "--license", lic.license_id, "--meter", "runs=500",
        "-o", str(top_file),
    )  # fmt: skip
    assert code == 0, text
    topup = Topup.from_bytes(top_file.read_bytes(), _bundle(home))
    assert (topup.license_id, topup.meter, topup.units) == (lic.license_id, "runs", 500)
    code, text = _run("licenses", "--home", str(home))
    assert code == 0, text
    assert lic.license_id in text
    assert "(+500)" in text


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--seats", "cad=five"], "FEATURE=SEATS"),
        (["--meter", "runs=0"], "LIMIT > 0"),
        (["--meter", "runs=5", "--meter-overlimit", "other=allow"], "declared with --meter"),
        (["--seats", "cad=1", "--expires", "2025-02-30"], "YYYY-MM-DD"),
        (["--seats", "cad=1", "--expires", "2001-01-01"], "in the future"),
        (["--seats", "cad=1", "--lease", "1"], "seconds"),
        (["--seats", "cad=1", "--cryptolens-machine", "M"], "without a product id"),
        (
            ["--meter", "r=5", "--cryptolens-product-id", "1", "--cryptolens-data-object", "x"],
            "ID:NAME:METER",
        ),
        (
            ["--meter", "r=5", "--cryptolens-product-id", "1", "--cryptolens-flag", "9"],
            "from 1 to 8",
        ),
        (
            ["--meter", "r=5", "--cryptolens-product-id", "1", "--cryptolens-credit", "1:c:r:-3"],
            "ID:NAME:METER:CREDIT",
        ),
        (
            [
                "--meter",
                "r=5",
                "--cryptolens-product-id",
                "1",
                "--cryptolens-features-template",
                "not json",
            ],
            "feature template",
        ),
        (["--meter", "r=5", "--cryptolens-trial"], "without a product id"),
        (["--seats", "cad=1", "--seats", "cad=2"], "each feature once"),
        ([], "at least one --seats or --meter"),
    ],
)
def test_unusable_flags_exit_2_with_expected_and_found(
    home: Path, tmp_path: Path, flags: list[str], needle: str
) -> None:
    out = tmp_path / "x.lic"
    code, text = _run(
        "issue", "--home", str(home), "--customer", "C", "--product", "P", *flags, "-o", str(out)
    )
    assert code == 2, text
    assert needle in text
    assert "Expected" in text
    assert "Found" in text
    assert not out.exists()


def test_init_twice_refuses_and_exits_4(home: Path) -> None:
    code, text = _run("init", "--home", str(home))
    assert code == 4
    assert "rotate-key" in text


def test_issue_refuses_to_overwrite_output(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "l.lic"
    out.write_bytes(b"precious")
    code, text = _run("issue", "--home", str(home), "--customer", "C", "--product", "P",
                      "--seats", "a=1", "-o", str(out))  # fmt: skip
    assert code == 4, text
    assert out.read_bytes() == b"precious"


def test_topup_for_unknown_license_or_meter_exits_2(home: Path, tmp_path: Path) -> None:
    code, text = _run("topup", "--home", str(home), "--license", "lic_nope", "--meter", "r=1",
                      "-o", str(tmp_path / "t"))  # fmt: skip
    assert code == 2
    assert "does not hold" in text
    lic_file = tmp_path / "l.lic"
    _run("issue", "--home", str(home), "--customer", "C", "--product", "P", "--meter", "r=5",
         "-o", str(lic_file))  # fmt: skip
    lic = License.from_bytes(lic_file.read_bytes(), _bundle(home))
    code, text = _run("topup", "--home", str(home), "--license", lic.license_id,
                      "--meter", "other=1", "-o", str(tmp_path / "t"))  # fmt: skip
    assert code == 2
    assert "a meter of this license: r" in text


def test_rotate_key_then_issue_uses_new_key_and_old_license_still_lists(
    home: Path, tmp_path: Path
) -> None:
    first = tmp_path / "a.lic"
    _run("issue", "--home", str(home), "--customer", "C", "--product", "P", "--seats", "a=1",
         "-o", str(first))  # fmt: skip
    code, text = _run("rotate-key", "--home", str(home))
    assert code == 0, text
    second = tmp_path / "b.lic"
    _run("issue", "--home", str(home), "--customer", "C", "--product", "P", "--seats", "a=1",
         "-o", str(second))  # fmt: skip
    bundle = _bundle(home)
    old = License.from_bytes(first.read_bytes(), bundle)
    new = License.from_bytes(second.read_bytes(), bundle)
    assert old.vendor_key_id != new.vendor_key_id == bundle.current_id.hex()
    code, text = _run("licenses", "--home", str(home))
    assert code == 0
    assert old.license_id in text
    assert new.license_id in text


def test_store_on_postgres(home: Path, tmp_path: Path, fresh_postgres_url: str) -> None:
    out = tmp_path / "l.lic"
    url = fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://")
    code, text = _run("issue", "--home", str(home), "--store", url, "--customer", "PG",
                      "--product", "P", "--seats", "a=1", "-o", str(out))  # fmt: skip
    assert code == 0, text
    code, text = _run("licenses", "--home", str(home), "--store", url)
    assert code == 0
    assert "PG" in text
    assert not (home / "vendor.db").exists()


def test_real_process_init_and_issue(tmp_path: Path) -> None:
    src = Path(meterbox.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(src)}
    home = tmp_path / "v"
    base = [sys.executable, "-c", "from meterbox.cli import main; main()", "vendor"]
    init = subprocess.run([*base, "init", "--home", str(home)], env=env, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert init.returncode == 0, init.stderr
    bad = subprocess.run([*base, "issue", "--home", str(home), "--customer", "C", "--product",
                          "P", "--meter", "r=-1", "-o", str(tmp_path / "x")], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    assert bad.returncode == 2
    assert "--meter is not usable" in bad.stderr
    ok = subprocess.run([*base, "issue", "--home", str(home), "--customer", "C", "--product",
                         "P", "--meter", "r=5", "-o", str(tmp_path / "l.lic")], env=env,
                        capture_output=True, text=True, check=False)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    License.from_bytes((tmp_path / "l.lic").read_bytes(), _bundle(home))


def test_issue_require_tpm_signs_a_format_3_license(home: Path, tmp_path: Path) -> None:
    out, plain = tmp_path / "tpm.lic", tmp_path / "plain.lic"
    base = ("issue", "--home", str(home), "--customer", "C", "--product", "P", "--seats", "cad=1")
    code, text = _run(*base, "--require-tpm", "-o", str(out))
    assert code == 0, text
    lic = License.from_bytes(out.read_bytes(), _bundle(home))
    assert lic.require_tpm
    assert lic.format_version == 3
    assert b"meterbox-license/3" in out.read_bytes()
    code, text = _run(*base, "-o", str(plain))
    assert code == 0, text
    # Without the flag nothing changes: the license stays in the oldest format it fits.
    assert License.from_bytes(plain.read_bytes(), _bundle(home)).format_version == 1


def test_issue_cluster_size_signs_a_format_4_license_and_lists_it(
    home: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cluster.lic"
    base = ("issue", "--home", str(home), "--customer", "C", "--product", "P", "--seats", "cad=4")
    code, text = _run(*base, "--cluster-size", "3", "-o", str(out))
    assert code == 0, text
    assert "Cluster of 3 server instances" in text
    lic = License.from_bytes(out.read_bytes(), _bundle(home))
    assert (lic.cluster_size, lic.format_version) == (3, 4)
    code, text = _run("licenses", "--home", str(home), "--json")
    assert code == 0, text
    assert '"cluster_size": 3' in text


@pytest.mark.parametrize("size", ["0", "257", "-1"])
def test_issue_refuses_a_cluster_size_out_of_range(home: Path, tmp_path: Path, size: str) -> None:
    out = tmp_path / "x.lic"
    code, text = _run(
        "issue", "--home", str(home), "--customer", "C", "--product", "P", "--seats", "cad=1",
        "--cluster-size", size, "-o", str(out),
    )  # fmt: skip
    assert code == 2, text
    assert "--cluster-size" in text
    assert "1 to 256 server instances" in text
    assert not out.exists()
    with VendorStore.open(None, home=home) as db:
        assert db.list_licenses() == []
