"""TLS from a node to etcd: the CA bundle, client certificate and key (docs/adr/0035).

:func:`etcd_tls` checks the three settings once, before anything starts: the URL says
``etcds://`` exactly when TLS settings are given, the CA bundle is given with TLS, the
certificate and key come together, every file is readable and is what it claims (the
CA bundle loads as trust anchors, the certificate loads with its key). It returns an
immutable :class:`EtcdTls` or raises :class:`~meterbox.errors.ConfigError`.

The handshake itself is ``requests``' (through etcd3gw's session): server
certificates are verified against the CA bundle with the host name checked, and
the client certificate answers etcd's ``--client-cert-auth``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from meterbox.errors import ConfigError

_SETTINGS = "cluster_ca, cluster_cert and cluster_key (--cluster-ca, --cluster-cert, --cluster-key)"


@dataclass(frozen=True)
class EtcdTls:
    """Checked TLS files for etcd: trust anchors and an optional client identity."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    @property
    def client_cert(self) -> tuple[str, str] | None:
        """``(cert, key)`` as ``requests`` takes it, or None without a client certificate."""
        if self.cert is None or self.key is None:
            return None
        return str(self.cert), str(self.key)


def _readable(path: Path, setting: str, what: str) -> None:
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise ConfigError(
            f"The {setting} file cannot be read",
            expected=f"a readable PEM file with {what}",
            found=f"{path}: {exc.strerror or exc}",
            hint=f"check the path and permissions of {setting} "
            f"(--{setting.replace('_', '-')} or METERBOX_{setting.upper()})",
        ) from None


def etcd_tls(*, tls: bool, ca: Path | None, cert: Path | None, key: Path | None) -> EtcdTls | None:
    """The checked TLS settings, None for plain ``etcd://``; see the module docstring."""
    given = [name for name, v in (("cluster_ca", ca), ("cluster_cert", cert),
                                  ("cluster_key", key)) if v is not None]  # fmt: skip
    if not tls:
        if given:
            raise ConfigError(
                "TLS files for etcd are set but the cluster URL is plain etcd://",
                expected="etcds://host:port,... with " + _SETTINGS,
                found=f"{', '.join(given)} set with an etcd:// cluster URL",
                hint="write the cluster URL as etcds://... to speak TLS to etcd, "
                "or remove the TLS settings",
            )
        return None
    if ca is None:
        raise ConfigError(
            "An etcds:// cluster needs the CA that signed the etcd members' certificates",
            expected="cluster_ca (--cluster-ca, METERBOX_CLUSTER_CA): a PEM CA bundle",
            found="no cluster_ca",
            hint="set cluster_ca to etcd's --trusted-ca-file (or the CA that signed its "
            "--cert-file)",
        )
    if (cert is None) != (key is None):
        raise ConfigError(
            "A client certificate for etcd needs its key, and a key its certificate",
            expected="cluster_cert and cluster_key together",
            found=f"only {'cluster_cert' if cert is not None else 'cluster_key'}",
            hint="set both (etcd with --client-cert-auth needs them), or neither",
        )
    _readable(ca, "cluster_ca", "CA certificates")
    try:
        ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(
            "The cluster_ca file holds no usable CA certificate",
            expected="a PEM bundle of one or more CA certificates ('-----BEGIN CERTIFICATE-----')",
            found=f"{ca}: {exc}",
            hint="point cluster_ca at the CA certificate (not a key or a DER file)",
        ) from None
    if cert is not None and key is not None:
        _readable(cert, "cluster_cert", "this node's client certificate")
        _readable(key, "cluster_key", "the client certificate's private key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            context.load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                "The client certificate for etcd does not load with its key",
                expected="cluster_cert a PEM certificate and cluster_key its unencrypted "
                "PEM private key",
                found=f"{cert} and {key}: {exc}",
                hint="check that the key belongs to the certificate and is not "
                "passphrase-protected",
            ) from None
    return EtcdTls(ca, cert, key)
