"""TLS settings for etcd are checked before anything starts, and bad ones say why.

Real files: a CA and a client certificate made with ``cryptography`` (support.etcd.Pki),
and files that are not what they claim (a key as the CA, a key of another certificate).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterbox.errors import ConfigError
from meterbox.server._cluster import coordinator_for, etcd_tls
from support.etcd import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


def test_good_files_give_the_settings_requests_takes(pki: Pki) -> None:
    cert, key = pki.issue("node", server=False)
    tls = etcd_tls(tls=True, ca=pki.ca, cert=cert, key=key)
    assert tls is not None
    assert tls.ca == pki.ca
    assert tls.client_cert == (str(cert), str(key))
    assert etcd_tls(tls=True, ca=pki.ca, cert=None, key=None) == type(tls)(pki.ca)
    assert etcd_tls(tls=False, ca=None, cert=None, key=None) is None


def _refused(found: str, **kw: object) -> str:
    args: dict[str, object] = {"tls": True, "ca": None, "cert": None, "key": None, **kw}
    with pytest.raises(ConfigError) as exc:
        etcd_tls(**args)  # type: ignore[arg-type]
    text = str(exc.value)
    assert "Expected " in text and "Found " in text, text
    assert found in text, text
    return text


def test_tls_files_with_a_plain_url_are_refused(pki: Pki) -> None:
    text = _refused("cluster_ca set with an etcd:// cluster URL", tls=False, ca=pki.ca)
    assert "etcds://" in text


def test_an_etcds_url_needs_a_ca(pki: Pki) -> None:
    _refused("no cluster_ca")


def test_a_certificate_needs_its_key(pki: Pki) -> None:
    cert, key = pki.issue("half", server=False)
    _refused("only cluster_cert", ca=pki.ca, cert=cert)
    _refused("only cluster_key", ca=pki.ca, key=key)


def test_a_missing_file_names_the_setting_and_path(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    text = _refused(f"{missing}: No such file or directory", ca=missing)
    assert "cluster_ca file cannot be read" in text
    _, key = pki.issue("m", server=False)
    _refused(f"{missing}:", ca=pki.ca, cert=missing, key=key)


def test_an_unreadable_file_is_refused(pki: Pki, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes(pki.ca.read_bytes())
    locked.chmod(0)
    try:
        # Root reads anything; the check must then still pass the good content through.
        try:
            locked.open("rb").close()
        except PermissionError:
            _refused("Permission denied", ca=locked)
        else:
            assert etcd_tls(tls=True, ca=locked, cert=None, key=None) is not None
    finally:
        locked.chmod(0o600)


def test_a_key_given_as_the_ca_is_refused(pki: Pki) -> None:
    _, key = pki.issue("k", server=False)
    _refused("cluster_ca file holds no usable CA certificate", ca=key)


def test_a_key_of_another_certificate_is_refused(pki: Pki) -> None:
    cert, _ = pki.issue("a", server=False)
    _, other = pki.issue("b", server=False)
    _refused("does not load with its key", ca=pki.ca, cert=cert, key=other)


def test_tls_files_without_a_cluster_refuse_the_start(pki: Pki) -> None:
    with pytest.raises(ConfigError, match="TLS files for etcd are set"):
        coordinator_for(None, url="http://n1", ca=pki.ca)


@given(st.binary(max_size=400))
def test_any_bytes_as_the_ca_load_or_raise_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz-ca.pem"
    path.write_bytes(data)
    try:
        tls = etcd_tls(tls=True, ca=path, cert=None, key=None)
    except ConfigError as exc:
        message = str(exc)
    else:
        assert tls is not None and tls.ca == path
        return
    assert "cluster_ca" in message and "Expected " in message
