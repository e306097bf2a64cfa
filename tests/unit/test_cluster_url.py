"""The ``--cluster`` value: etcd endpoint lists parse, round-trip, and bad ones say why."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import ConfigError
from meterbox.server._cluster import (
    Endpoint,
    format_cluster_url,
    parse_cluster_url,
    uses_tls,
)
from meterbox.server._config import load

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=3).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_endpoint = st.builds(Endpoint, _host, st.integers(1, 65535))


@given(st.lists(_endpoint, min_size=1, max_size=15, unique=True), st.booleans())
def test_endpoint_lists_round_trip(endpoints: list[Endpoint], tls: bool) -> None:
    text = format_cluster_url(tuple(endpoints), tls=tls)
    assert text.startswith("etcds://" if tls else "etcd://")
    assert parse_cluster_url(text) == tuple(endpoints)
    assert uses_tls(text) is tls


def test_the_default_port_is_etcd_s() -> None:
    assert parse_cluster_url("etcd://h1,h2:2380") == (Endpoint("h1", 2379), Endpoint("h2", 2380))


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("http://h1:2379", "does not start with etcd:// or etcds://"),
        ("etcds://", "no endpoint after etcds://"),
        ("etcdss://h1", "does not start with"),
        ("https://h1:2379", "does not start with"),
        ("etcd://", "no endpoint"),
        ("etcd://h1:2379/v3", "a path"),
        ("etcd://user@h1", "a path, query, user"),
        ("etcd://h1:0", "port '0'"),
        ("etcd://h1:99999", "port '99999'"),
        ("etcd://h1:x", "port 'x'"),
        ("etcd://h1,,h2", "not a host name"),
        ("etcd://-bad", "not a host name"),
        ("etcd://[::1", "no closing"),
        ("etcd://[zz]:1", "not an IPv6"),
        ("etcd://h1,h1", "listed twice"),
        ("etcd://" + ",".join(f"h{i}" for i in range(16)), "at most 15"),
    ],
)
def test_a_bad_value_says_what_was_expected_and_found(value: str, found: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_cluster_url(value)
    assert "Expected etcd://host:port" in str(exc.value)
    assert found in str(exc.value)


@given(st.one_of(st.text(max_size=60), st.text(max_size=60).map("etcds://".__add__)))
def test_any_text_parses_or_raises_config_error(value: str) -> None:
    try:
        endpoints = parse_cluster_url(value)
    except ConfigError:
        return
    again = format_cluster_url(endpoints, tls=uses_tls(value))
    assert endpoints and parse_cluster_url(again) == endpoints
    assert uses_tls(again) == value.startswith("etcds://")


def test_cluster_and_advertise_url_come_from_flags_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "server.toml"
    conf.write_text('cluster = "etcd://a:1,b:2"\nadvertise_url = "https://n1.example:8443/"\n')
    loaded = load({"data": tmp_path}, conf, environ={})
    assert loaded.config.cluster == "etcd://a:1,b:2"
    assert loaded.config.base_url() == "https://n1.example:8443"
    assert load({"data": tmp_path}, None, environ={}).config.cluster is None
    monkeypatch.setenv("METERBOX_CLUSTER", "etcd://c")
    env = load({"data": tmp_path}, None)
    assert env.config.cluster == "etcd://c:2379"
    assert env.sources["cluster"] == "env METERBOX_CLUSTER"
    assert env.config.base_url() == "http://127.0.0.1:8080"
    monkeypatch.setenv("METERBOX_CLUSTER", "etcds://c,d:2380")
    monkeypatch.setenv("METERBOX_CLUSTER_CA", "/etc/meterbox/etcd-ca.pem")
    tls = load({"data": tmp_path}, None)
    assert tls.config.cluster == "etcds://c:2379,d:2380"
    assert tls.config.cluster_ca == Path("/etc/meterbox/etcd-ca.pem")
    assert tls.sources["cluster_ca"] == "env METERBOX_CLUSTER_CA"


def test_the_quota_idle_time_comes_from_flags_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert load({"data": tmp_path}, None, environ={}).config.cluster_quota_idle_s == 30.0
    conf = tmp_path / "server.toml"
    conf.write_text("cluster_quota_idle_s = 2.5\n")
    from_file = load({"data": tmp_path}, conf, environ={})
    assert from_file.config.cluster_quota_idle_s == 2.5
    assert from_file.sources["cluster_quota_idle_s"] == f"file {conf}:1"
    monkeypatch.setenv("METERBOX_CLUSTER_QUOTA_IDLE_S", "7")
    env = load({"data": tmp_path}, conf)
    assert (env.config.cluster_quota_idle_s, env.sources["cluster_quota_idle_s"]) == (
        7.0,
        "env METERBOX_CLUSTER_QUOTA_IDLE_S",
    )
    flag = load({"data": tmp_path, "cluster_quota_idle_s": 1.0}, conf)
    assert flag.sources["cluster_quota_idle_s"] == "flag --cluster-quota-idle-s"


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("cluster", "etcd://h1:0", "Found 'etcd://h1:0' from flag --cluster"),
        ("advertise_url", "ftp://x", "Found 'ftp://x' from flag --advertise-url"),
        ("cluster_quota_idle_s", 0, "Found 0 from flag --cluster-quota-idle-s"),
    ],
)
def test_a_bad_setting_refuses_the_start(tmp_path: Path, key: str, value: str, found: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load({"data": tmp_path, key: value}, None, environ={})
    assert found in str(exc.value)
