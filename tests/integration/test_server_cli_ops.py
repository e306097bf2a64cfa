"""`meterbox server` as an operator meets it: queries that never write, starts that fail early.

Each scenario builds a real data directory (vendor keys, a signed license, ``server
init``) with :func:`server_proc_support.make_data` and runs the real command.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterbox.cli import app
from support.server_proc import free_port, make_data

runner = CliRunner()


def tree(root: Path) -> dict[str, tuple[int, float, str]]:
    """Every file under ``root`` with its mode, modification time and content digest."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_mode,
            p.stat().st_mtime,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_status_of_a_stopped_server_writes_nothing(tmp_path: Path) -> None:
    from meterbox.server._instance import ServerInstance

    site = make_data(tmp_path)
    # One start and stop first, as on a site that has served before.
    ServerInstance.open(site.data).close()
    before = tree(site.data)
    seqs = []
    for _ in range(3):
        result = runner.invoke(app, ["server", "status", "--data", str(site.data), "--json"])
        assert result.exit_code == 0, result.output
        seqs.append(json.loads(result.stdout)["ledger"]["seq"])
    assert tree(site.data) == before
    assert len(set(seqs)) == 1


def test_status_reads_the_same_head_a_running_server_resumes_from(tmp_path: Path) -> None:
    from meterbox.ledger import read_head
    from meterbox.server._instance import ServerInstance

    site = make_data(tmp_path)
    head = read_head(site.data / "ledger")
    inst = ServerInstance.open(site.data)
    try:
        # Opening for writing appends epoch/boot records after the head read above.
        assert inst.writer.head.seq > head.seq
    finally:
        inst.close()
    assert read_head(site.data / "ledger").seq > head.seq


def test_port_in_use_fails_before_the_ledger_is_opened(tmp_path: Path) -> None:
    site = make_data(tmp_path)
    before = tree(site.data)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(
            app, ["server", "run", "--data", str(site.data), "--port", str(port)]
        )
    assert result.exit_code == 2, result.output
    assert f"another process listens on 127.0.0.1:{port}" in result.output
    assert "--port" in result.output
    assert tree(site.data) == before


@pytest.mark.parametrize("missing", ["cert", "key"])
def test_missing_tls_file_fails_before_the_ledger_is_opened(tmp_path: Path, missing: str) -> None:
    site = make_data(tmp_path)
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    (key if missing == "cert" else cert).write_text("present\n")
    before = tree(site.data)
    result = runner.invoke(
        app,
        ["server", "run", "--data", str(site.data), "--port", str(free_port()),
         "--tls-cert", str(cert), "--tls-key", str(key)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(cert if missing == "cert" else key) in result.output
    assert tree(site.data) == before


def test_unusable_tls_pair_fails_before_the_ledger_is_opened(tmp_path: Path) -> None:
    site = make_data(tmp_path)
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_text("not a certificate\n")
    key.write_text("not a key\n")
    before = tree(site.data)
    result = runner.invoke(
        app,
        ["server", "run", "--data", str(site.data), "--port", str(free_port()),
         "--tls-cert", str(cert), "--tls-key", str(key)],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "TLS certificate and key cannot be used" in result.output
    assert tree(site.data) == before


# ------------------------------------------------------------------ configuration


def test_typo_in_the_configuration_file_is_refused_with_key_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('host = "127.0.0.1"\nprot = 18433\n')
    result = runner.invoke(app, ["server", "run", "--data", str(tmp_path), "--config", str(conf)])
    assert result.exit_code == 2
    assert f"'prot' at {conf}:2" in result.stderr
    assert "Did you mean 'port'?" in result.stderr


def test_every_setting_can_come_from_the_file_and_says_so(tmp_path: Path) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text(
        'data = "srv"\nhost = "0.0.0.0"\nport = 9443\ntls_cert = "c.pem"\n'
        'tls_key = "k.pem"\nlog_level = "debug"\nforce_recover = true\nlog_format = "text"\n'
        'activity_log = "act.jsonl"\napi_keys = "required"\n'
        'cluster = "etcds://127.0.0.1:2379,127.0.0.2:2379"\n'
        'advertise_url = "https://lic1.example:8443"\n'
        'cluster_ca = "etcd-ca.pem"\ncluster_cert = "node.pem"\ncluster_key = "node-key.pem"\n'
        "cluster_quota_idle_s = 12.5\n"
    )
    result = runner.invoke(app, ["server", "config", "--config", str(conf), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["data"] == {"value": str(tmp_path / "srv"), "source": f"file {conf}:1"}
    assert doc["port"]["value"] == 9443
    assert doc["force_recover"] == {"value": True, "source": f"file {conf}:7"}
    assert doc["log_format"] == {"value": "text", "source": f"file {conf}:8"}
    assert doc["activity_log"]["value"] == str(tmp_path / "act.jsonl")
    assert doc["api_keys"] == {"value": "required", "source": f"file {conf}:10"}
    assert doc["cluster"]["source"] == f"file {conf}:11"
    assert doc["advertise_url"] == {
        "value": "https://lic1.example:8443",
        "source": f"file {conf}:12",
    }
    assert doc["cluster"]["value"] == "etcds://127.0.0.1:2379,127.0.0.2:2379"
    assert doc["cluster_ca"] == {
        "value": str(tmp_path / "etcd-ca.pem"),
        "source": f"file {conf}:13",
    }
    assert doc["cluster_key"] == {
        "value": str(tmp_path / "node-key.pem"),
        "source": f"file {conf}:15",
    }
    assert doc["cluster_quota_idle_s"] == {"value": 12.5, "source": f"file {conf}:16"}
    assert {v["source"].split(":")[0] for v in doc.values()} == {f"file {conf}"}


def test_flags_beat_environment_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('data = "srv"\nport = 9000\nhost = "10.0.0.1"\n')
    monkeypatch.setenv("METERBOX_PORT", "9100")
    monkeypatch.setenv("METERBOX_HOST", "10.0.0.2")
    result = runner.invoke(
        app, ["server", "config", "--config", str(conf), "--host", "10.0.0.3", "--json"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["host"] == {"value": "10.0.0.3", "source": "flag --host"}
    assert doc["port"] == {"value": 9100, "source": "env METERBOX_PORT"}
    assert doc["data"]["source"] == f"file {conf}:1"
    assert doc["log_level"] == {"value": "info", "source": "default"}


def test_config_show_prints_one_line_per_setting_within_80_columns(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["server", "config", "--data", str(tmp_path), "--show"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ["port", "8080", "default"] for line in lines)
    assert all(len(line) <= 80 for line in lines)


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--log-level", "loud"], {}, "Found 'loud' from flag --log-level"),
        ([], {"METERBOX_PORT": "http"}, "from env METERBOX_PORT"),
        ([], {"METERBOX_PORT": "70000"}, "1 to 65535"),
        (["--tls-cert", "c.pem"], {}, "TLS needs both a certificate and a key"),
    ],
)
def test_unusable_setting_names_its_source(
    tmp_path: Path, args: list[str], env: dict[str, str], needle: str
) -> None:
    result = runner.invoke(app, ["server", "run", "--data", str(tmp_path), *args], env=env)
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert "Traceback" not in result.output
