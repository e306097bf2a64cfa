"""The on-site server's settings: one model for flags, ``METERBOX_*`` variables and TOML.

Precedence, highest first: command-line flags, environment variables (``METERBOX_`` plus
the setting's name in capitals, e.g. ``METERBOX_PORT``), the TOML file given with
``--config`` / ``METERBOX_CONFIG`` (keys named like the settings, e.g. ``port = 8443``),
then the defaults below. Every setting can be set in each source.

Invariants: an unknown key in the file is refused, naming the key, its line and the
nearest known key, so a typo never falls back to a default silently; every value says
where it came from (:attr:`LoadedConfig.sources`), which ``meterbox server config
--show`` prints. Relative paths in the file are relative to the file's directory.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from meterbox.errors import ConfigError, MeterboxError

ENV_PREFIX = "METERBOX_"
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["json", "text"]

ApiKeyMode = Literal["auto", "required", "optional"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    if host.lower() in {"localhost", "localhost.", "ip6-localhost"}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to any interface: not loopback.
        return False


# The file's values for the load in progress; a context variable because pydantic-settings
# builds its sources from the class, not from the call.
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("_FILE_VALUES", default={})  # noqa: B039 - never mutated


class ServerConfig(BaseSettings):
    """What ``meterbox server run`` needs to serve."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    data: Path = Field(description="Server data directory (from 'meterbox server init').")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=1, le=65535, description="TCP port to listen on.")
    tls_cert: Path | None = Field(None, description="PEM certificate; TLS needs tls_key too.")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    log_level: LogLevel = Field("info", description="Least severe log level written.")
    log_format: LogFormat = Field(
        "json", description="Log lines as JSON objects (json) or readable text (text)."
    )
    force_recover: bool = Field(
        False, description="Cut a torn ledger tail longer than the automatic limit."
    )
    activity_log: Path | None = Field(
        None, description="The admin's activity log file (default DATA/activity.jsonl)."
    )
    api_keys: ApiKeyMode = Field(
        "auto",
        description="Site API keys for seats and usage: auto (required unless the host is "
        "loopback), required, or optional.",
    )
    cluster: str | None = Field(
        None,
        description="Share seats with other servers through etcd: "
        "etcd://host:port,host:port,... or etcds://... for TLS (unset: a single server).",
    )
    cluster_ca: Path | None = Field(
        None, description="PEM CA bundle that signed the etcd members' certificates (etcds://)."
    )
    cluster_cert: Path | None = Field(
        None, description="PEM client certificate this node presents to etcd (etcds://)."
    )
    cluster_key: Path | None = Field(None, description="PEM private key of cluster_cert.")
    advertise_url: str | None = Field(
        None,
        description="The base URL other nodes and clients reach this server at "
        "(default: from host and port).",
    )
    cluster_quota_idle_s: float = Field(
        30.0,
        gt=0,
        description="Seconds after which a cluster node gives back a quota block nothing "
        "drew on, so other nodes can grant its units (sooner, 5 s at most, near the limit).",
    )

    @field_validator("cluster")
    @classmethod
    def _check_cluster(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from meterbox.server._cluster import format_cluster_url, parse_cluster_url, uses_tls

        try:
            return format_cluster_url(parse_cluster_url(value), tls=uses_tls(value))
        except MeterboxError as exc:
            raise ValueError(exc.render()) from None

    @field_validator("advertise_url")
    @classmethod
    def _check_advertise_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ValueError(
                f"expected an http(s) base URL such as https://node1.example:8080, "
                f"found {value[:80]!r}"
            )
        return value.rstrip("/")

    def base_url(self) -> str:
        """The URL this server advertises: advertise_url, else one made of host and port."""
        if self.advertise_url:
            return self.advertise_url
        scheme = "https" if self.tls_cert else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def keys_required(self) -> bool:
        """Whether seat and usage requests need a site API key on this listen address."""
        if self.api_keys != "auto":
            return self.api_keys == "required"
        return not is_loopback(self.host)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _FileSource(settings_cls))


class _FileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_VALUES.get())


@dataclass(frozen=True)
class LoadedConfig:
    config: ServerConfig
    #: setting name -> "flag --port", "env METERBOX_PORT", "file PATH:LINE" or "default".
    sources: dict[str, str]

    def as_rows(self) -> list[tuple[str, str, str]]:
        """(setting, value as it would be written in TOML, source) in declaration order."""
        values = self.config.model_dump()
        return [(name, _show(values[name]), self.sources[name]) for name in _fields()]


def _fields() -> list[str]:
    return list(ServerConfig.model_fields)


def _show(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def read_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's settings and the line each was set on; unknown keys are refused."""
    try:
        text = path.read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(
            "the configuration file is a directory",
            expected="a TOML file",
            found=f"{path} is a directory",
            hint="pass the file inside it with --config",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "cannot read the configuration file",
            expected="a readable UTF-8 TOML file",
            found=f"{path}: {getattr(exc, 'strerror', None) or exc}",
            hint="check the path and its permissions (--config or METERBOX_CONFIG)",
        ) from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            "the configuration file is not valid TOML",
            expected="lines like 'port = 8080'",
            found=f"{path}: {exc}",
            hint="fix the line named above",
        ) from None
    lines = _key_lines(text)
    known = _fields()
    for key in values:
        if key not in known:
            near = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(
                f"unknown setting {key!r} in the configuration file",
                expected=f"one of {', '.join(known)}",
                found=f"{key!r} at {path}:{lines.get(key, '?')}",
                hint=f"did you mean {near[0]!r}?" if near else "remove or rename the key",
            )
    base = path.parent
    for key in ("data", "tls_cert", "tls_key", "activity_log", "cluster_ca", "cluster_cert",
                "cluster_key"):  # fmt: skip
        if isinstance(values.get(key), str):
            values[key] = str(base / Path(values[key]).expanduser())
    return values, lines


_KEY_LINE = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


def _key_lines(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _KEY_LINE.match(line)
        if match:
            found.setdefault(match.group(1).strip("\"'"), number)
    return found


def load(
    flags: Mapping[str, Any],
    config_file: Path | None,
    environ: Mapping[str, str] | None = None,
) -> LoadedConfig:
    """The effective settings from flags (None = not given), the environment and the file.

    ``environ`` is the environment pydantic-settings reads, ``os.environ``; it is a
    parameter only so that the provenance shown is computed from the same mapping.
    """
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in flags.items() if v is not None}
    file_values, lines = read_file(config_file) if config_file is not None else ({}, {})
    env_names = {f"{ENV_PREFIX}{name.upper()}": name for name in _fields()}
    in_env = {name for var, name in env_names.items() if var in environ}
    sources: dict[str, str] = {}
    for name in _fields():
        if name in given:
            sources[name] = f"flag {_flag(name)}"
        elif name in in_env:
            sources[name] = f"env {ENV_PREFIX}{name.upper()}"
        elif name in file_values:
            sources[name] = f"file {config_file}:{lines.get(name, '?')}"
        else:
            sources[name] = "default"
    token = _FILE_VALUES.set(file_values)
    try:
        config = ServerConfig(**given)
    except ValidationError as exc:
        raise _config_error(exc, sources) from None
    finally:
        _FILE_VALUES.reset(token)
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError(
            "TLS needs both a certificate and a key",
            expected="tls_cert and tls_key together (--tls-cert and --tls-key)",
            found=f"only {'tls_cert' if config.tls_cert else 'tls_key'}",
            hint="set both, or neither to serve plain HTTP on loopback",
        )
    return LoadedConfig(config, sources)


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    first = exc.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "?"
    if name == "data" and first["type"] == "missing":
        return ConfigError(
            "no server data directory given",
            expected="--data DIR, METERBOX_DATA or 'data = \"DIR\"' in the configuration file",
            found="none of them",
            hint="use the directory 'meterbox server init' created",
        )
    field = ServerConfig.model_fields.get(name)
    expected = {
        "port": "a TCP port number from 1 to 65535",
        "log_level": "one of debug, info, warning, error, critical",
        "log_format": "json or text",
        "force_recover": "true or false",
    }.get(name, field.description if field and field.description else "a usable value")
    return ConfigError(
        f"the setting {name!r} is not usable",
        expected=expected,
        found=f"{first.get('input')!r} from {sources.get(name, 'the input')}",
        hint=f"change it where it was set ({sources.get(name, 'flag')})",
    )
