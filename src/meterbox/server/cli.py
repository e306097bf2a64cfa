"""`meterbox server` commands: init, run, status, export, import, cryptolens-key, fingerprint,
keys, tpm reenrol.

``run`` and ``config`` take their settings from flags, then METERBOX_* environment
variables, then a TOML file given with ``--config`` (keys named like the long flags, e.g.
``port = 8080``); one pydantic-settings model, :mod:`meterbox.server._config`.
Exit codes are the shared table of :mod:`meterbox._cli_support` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from meterbox._cli_support import EXIT_CODES_HELP, exit_code_for
from meterbox._fs import disk_error, write_new_file
from meterbox.errors import ConfigError, MeterboxError, StateError

app = typer.Typer(no_args_is_help=True, add_completion=False, epilog=EXIT_CODES_HELP)
out = Console()
# Messages are not wrapped: a line per message survives grep and log collectors.
err = Console(stderr=True, soft_wrap=True, highlight=False)

DataOption = Annotated[
    Path, typer.Option("--data", envvar="METERBOX_DATA", help="Server data directory.")
]


def _fail(exc: MeterboxError) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc.render()}", highlight=False)
    raise typer.Exit(exit_code_for(exc))


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object (docs/api.md).")
]


def _print_json(doc: object) -> None:
    typer.echo(json.dumps(doc, sort_keys=True))


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except MeterboxError as exc:
        _fail(exc)


@app.command()
def init(
    data: DataOption,
    vendor_key: Annotated[Path, typer.Option("--vendor-key", help="The vendor's vendor.pub.")],
    license_files: Annotated[list[Path], typer.Option("--license", help="License file(s).")],
    tpm: Annotated[
        str,
        typer.Option(
            "--tpm",
            help="auto: anchor the ledger to a TPM 2.0 when one answers; require: refuse "
            "without one; off: never use one.",
        ),
    ] = "auto",
    tpm_tcti: Annotated[
        str,
        typer.Option("--tpm-tcti", envvar="METERBOX_TPM_TCTI", help="TCTI of the TPM."),
    ] = "device:/dev/tpmrm0",
    as_json: JsonOpt = False,
) -> None:
    """Create a server instance: identity, ledger genesis, licenses, admin token."""
    from meterbox.server._instance import init_server
    from meterbox.tpm import TpmMode

    if data.exists() and not data.is_dir():
        _fail(
            ConfigError(
                "--data names a file",
                expected="a new or empty directory for the server's data",
                found=f"{data} is a file",
                hint="pass a directory path; 'meterbox server init' creates it",
            )
        )

    with _errors():
        result = init_server(
            data,
            vendor_pub=vendor_key,
            license_files=license_files,
            tpm=TpmMode.parse(tpm),
            tpm_tcti=tpm_tcti,
        )
    if as_json:
        # The token itself stays in its 0600 file: JSON output ends up in scripts' logs.
        _print_json(
            {
                "instance_id": result.instance_id,
                "data": str(data),
                "licenses": list(result.licenses),
                "tpm": str(result.tpm),
                "admin_token_file": str(data / "admin.token"),
            }
        )
        return
    out.print(f"Server instance [bold]{result.instance_id}[/] created in {data}")
    out.print(f"Licenses: {', '.join(result.licenses)}")
    out.print(f"TPM: {result.tpm}")
    out.print(f"Admin token (also in {data / 'admin.token'}, mode 0600):")
    out.print(result.admin_token, highlight=False, soft_wrap=True)


# The options of `run` and `config`; None means "not given", so the environment, the
# file and then the default apply (see meterbox.server._config for the precedence).
RunData = Annotated[
    Path | None,
    typer.Option("--data", metavar="DIR", show_default=False,
                 help="Server data directory. [env METERBOX_DATA; file: data]"),
]  # fmt: skip
HostOpt = Annotated[
    str | None,
    typer.Option("--host", metavar="ADDR", show_default=False,
                 help="Address to listen on. [default: 127.0.0.1; env METERBOX_HOST]"),
]  # fmt: skip
PortOpt = Annotated[
    int | None,
    typer.Option("--port", metavar="PORT", show_default=False,
                 help="TCP port to listen on. [default: 8080; env METERBOX_PORT]"),
]  # fmt: skip
TlsCertOpt = Annotated[
    Path | None,
    typer.Option("--tls-cert", metavar="FILE", show_default=False,
                 help="PEM certificate for HTTPS (with --tls-key). [env METERBOX_TLS_CERT]"),
]  # fmt: skip
TlsKeyOpt = Annotated[
    Path | None,
    typer.Option("--tls-key", metavar="FILE", show_default=False,
                 help="PEM private key of --tls-cert. [env METERBOX_TLS_KEY]"),
]  # fmt: skip
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", metavar="FILE", envvar="METERBOX_CONFIG", show_default=False,
                 help="TOML file with the same settings, e.g. 'port = 8443'. "
                 "[env METERBOX_CONFIG]"),
]  # fmt: skip
LogLevelOpt = Annotated[
    str | None,
    typer.Option("--log-level", metavar="LEVEL", show_default=False,
                 help="debug, info, warning, error or critical. "
                 "[default: info; env METERBOX_LOG_LEVEL]"),
]  # fmt: skip
LogFormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", metavar="FORMAT", show_default=False,
                 help="json (one JSON object per line) or text. "
                 "[default: json; env METERBOX_LOG_FORMAT]"),
]  # fmt: skip
ForceRecoverOpt = Annotated[
    bool | None,
    typer.Option("--force-recover", metavar="", show_default=False,
                 help="Cut a torn ledger tail even if longer than the automatic limit "
                 "(after a crash; the cut is recorded in the ledger). "
                 "[env METERBOX_FORCE_RECOVER]"),
]  # fmt: skip

ApiKeysOpt = Annotated[
    str | None,
    typer.Option("--api-keys", metavar="MODE", show_default=False,
                 help="auto (required unless --host is loopback), required or optional: "
                 "whether seats and usage need a site API key. "
                 "[default: auto; env METERBOX_API_KEYS]"),
]  # fmt: skip

ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", metavar="URL", show_default=False,
                 help="Share seats with other servers through etcd: "
                 "etcd://host:port,host:port,... [default: a single server; "
                 "env METERBOX_CLUSTER]"),
]  # fmt: skip
ClusterCaOpt = Annotated[
    Path | None,
    typer.Option("--cluster-ca", metavar="PEM", show_default=False,
                 help="CA bundle that signed the etcd members' certificates "
                 "(etcds:// only). [env METERBOX_CLUSTER_CA]"),
]  # fmt: skip
ClusterCertOpt = Annotated[
    Path | None,
    typer.Option("--cluster-cert", metavar="PEM", show_default=False,
                 help="Client certificate this node presents to etcd (etcds:// only). "
                 "[env METERBOX_CLUSTER_CERT]"),
]  # fmt: skip
ClusterKeyOpt = Annotated[
    Path | None,
    typer.Option("--cluster-key", metavar="PEM", show_default=False,
                 help="Private key of --cluster-cert. [env METERBOX_CLUSTER_KEY]"),
]  # fmt: skip
AdvertiseUrlOpt = Annotated[
    str | None,
    typer.Option("--advertise-url", metavar="URL", show_default=False,
                 help="Base URL other nodes and clients reach this server at "
                 "[default: from --host and --port; env METERBOX_ADVERTISE_URL]"),
]  # fmt: skip

QuotaIdleOpt = Annotated[
    float | None,
    typer.Option("--cluster-quota-idle-s", metavar="SECONDS", show_default=False,
                 help="Give back a quota block nothing drew on for this long "
                 "[default: 30; env METERBOX_CLUSTER_QUOTA_IDLE_S]"),
]  # fmt: skip


def _load_config(flags: dict[str, Any], config: Path | None) -> Any:
    from meterbox.server import _config

    with _errors():
        return _config.load(flags, config)


def _preflight(host: str, port: int, tls_cert: Path | None, tls_key: Path | None) -> None:
    """Refuse a start that cannot serve before anything in the data directory is opened.

    Binding and loading the TLS files fail here, not after the ledger wrote its boot
    records: a failed start leaves the data directory as it was.
    """
    import errno
    import socket
    import ssl

    if tls_cert is not None and tls_key is not None:
        for what, path in (("certificate", tls_cert), ("private key", tls_key)):
            if not path.is_file():
                raise ConfigError(
                    f"the TLS {what} file is missing",
                    expected=f"a PEM {what} file",
                    found=f"{path}: {'a directory' if path.is_dir() else 'no such file'}",
                    hint="check --tls-cert/--tls-key (or tls_cert/tls_key in the file)",
                )
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(tls_cert), str(tls_key)
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "the TLS certificate and key cannot be used",
                expected="a PEM certificate and its matching unencrypted PEM private key",
                found=f"{tls_cert}, {tls_key}: {getattr(exc, 'strerror', None) or exc}",
                hint="check that the key belongs to the certificate and is readable",
            ) from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(
            "the listen address does not resolve",
            expected="an IP address or a resolvable host name",
            found=f"{host!r}: {exc.strerror}",
            hint="pass --host 127.0.0.1 (loopback) or --host 0.0.0.0 (every interface)",
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # uvicorn binds with SO_REUSEADDR too, so a port in TIME_WAIT is not "in use".
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    "the port is in use",
                    expected=f"a free port on {host}",
                    found=f"another process listens on {host}:{port}",
                    hint="pass --port (or METERBOX_PORT) with a free port, or stop that process",
                ) from None
            if exc.errno == errno.EACCES:
                raise ConfigError(
                    "the port needs privileges this process does not have",
                    expected="a port from 1024 up, or the capability to bind low ports",
                    found=f"{host}:{port}: permission denied",
                    hint="pass --port 8080, or put a reverse proxy in front",
                ) from None
            raise ConfigError(
                "cannot listen on the address",
                expected=f"an address of this machine to bind {host}:{port}",
                found=exc.strerror or str(exc),
                hint="pass --host 127.0.0.1 or an address of one of this machine's interfaces",
            ) from None


@app.command()
def run(
    data: RunData = None,
    host: HostOpt = None,
    port: PortOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    force_recover: ForceRecoverOpt = None,
    api_keys: ApiKeysOpt = None,
    cluster: ClusterOpt = None,
    cluster_ca: ClusterCaOpt = None,
    cluster_cert: ClusterCertOpt = None,
    cluster_key: ClusterKeyOpt = None,
    advertise_url: AdvertiseUrlOpt = None,
    cluster_quota_idle_s: QuotaIdleOpt = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests, sync and stop."""
    flags = {
        "data": data,
        "host": host,
        "port": port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "log_level": log_level,
        "log_format": log_format,
        "force_recover": force_recover,
        "api_keys": api_keys,
        "cluster": cluster,
        "cluster_ca": cluster_ca,
        "cluster_cert": cluster_cert,
        "cluster_key": cluster_key,
        "advertise_url": advertise_url,
        "cluster_quota_idle_s": cluster_quota_idle_s,
    }
    conf = _load_config(flags, config).config
    with _errors():
        _preflight(conf.host, conf.port, conf.tls_cert, conf.tls_key)
    try:
        _serve(conf)
    except KeyboardInterrupt:
        err.print("interrupted during start-up; the server was not serving", highlight=False)
        raise typer.Exit(130) from None


def _serve(conf: Any) -> None:
    import logging.config

    import uvicorn

    from meterbox.server._instance import RUN_FILE, write_run_file
    from meterbox.server._logging import AccessLog, log_config
    from meterbox.server._runtime import build_server
    from meterbox.server._service import ServiceConfig
    from meterbox.server._uvicorn import GracefulServer, HeaderTimeoutProtocol

    data: Path = conf.data
    # Configured before anything logs; uvicorn is told not to configure it again, and its
    # access log (which would include query strings) is replaced by AccessLog.
    logging.config.dictConfig(log_config(conf.log_level, conf.log_format))
    required = conf.keys_required()
    with _errors():
        built = build_server(
            data,
            force_recover=conf.force_recover,
            require_api_key=required,
            activity_log=conf.activity_log,
            cluster=conf.cluster,
            advertise_url=conf.base_url(),
            cluster_tls=(conf.cluster_ca, conf.cluster_cert, conf.cluster_key),
            settings=ServiceConfig(quota_idle_s=conf.cluster_quota_idle_s),
        )
    scheme = "https" if conf.tls_cert else "http"
    # Said on every start, as a log record (so JSON logs stay JSON) at a level the
    # default --log-level shows: the admin sees whether a LAN neighbour needs a key.
    log = logging.getLogger("meterbox.server")
    if required:
        log.warning(
            "site API keys: required for seats and usage (listening on %s); "
            "create them with 'meterbox server keys create'",
            conf.host,
        )
    else:
        log.warning(
            "site API keys: optional (listening on %s%s); a presented key is still checked",
            conf.host,
            ", loopback only" if conf.api_keys == "auto" else "",
        )
    uv_config = uvicorn.Config(
        AccessLog(built.app),
        host=conf.host,
        port=conf.port,
        log_config=None,
        access_log=False,
        ssl_certfile=str(conf.tls_cert) if conf.tls_cert else None,
        ssl_keyfile=str(conf.tls_key) if conf.tls_key else None,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=16 * 1024,
        limit_concurrency=1000,
        http=HeaderTimeoutProtocol,
    )
    server = GracefulServer(uv_config)
    # Long-lived state (leases, idempotency keys) grows to many objects; full collections
    # over all of it stalled requests for 100+ ms. Collect the young generation as usual,
    # the old one rarely.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    _reload_on_sighup(data, built)
    write_run_file(data, f"{scheme}://{conf.host}:{conf.port}")
    try:
        server.run()
    finally:
        built.close()
        (data / RUN_FILE).unlink(missing_ok=True)


def _reload_on_sighup(data: Path, built: Any) -> None:
    """SIGHUP reads the options file again, as ``meterbox server reload`` does."""
    import logging
    import signal

    from meterbox.server._site_options import read_options

    def reload(signum: int, frame: object) -> None:
        del signum, frame
        try:
            options = read_options(data)
        except MeterboxError as exc:
            log = logging.getLogger("meterbox.server")
            log.error("options not reloaded: %s", exc.render())  # noqa: TRY400 - the message is the whole story
            return
        # One attribute assignment: a checkout reads the options once, old or new.
        built.instance.service.engine.options = options
        logging.getLogger("meterbox.server").info("options reloaded from %s", options.source)

    signal.signal(signal.SIGHUP, reload)


@app.command("config")
def config_cmd(
    data: RunData = None,
    host: HostOpt = None,
    port: PortOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
    config: ConfigOpt = None,
    log_level: LogLevelOpt = None,
    log_format: LogFormatOpt = None,
    force_recover: ForceRecoverOpt = None,
    api_keys: ApiKeysOpt = None,
    show: Annotated[
        bool, typer.Option("--show", help="Print every setting, its value and its source.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Check the settings 'server run' would use with these options; --show prints them."""
    flags = {
        "data": data,
        "host": host,
        "port": port,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "log_level": log_level,
        "log_format": log_format,
        "force_recover": force_recover,
        "api_keys": api_keys,
    }
    loaded = _load_config(flags, config)
    rows = loaded.as_rows()
    if as_json:
        doc = {name: {"value": loaded.config.model_dump(mode="json")[name], "source": source}
               for name, _, source in rows}  # fmt: skip
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    if not show:
        out.print("configuration is usable; pass --show to print it", highlight=False)
        return
    from rich.table import Table

    table = Table("setting", "value", "source", box=None, pad_edge=False)
    for name, value, source in rows:
        table.add_row(name, value, source)
    out.print(table)


def _running(data: Path) -> tuple[str, str] | None:
    """The running server's URL and admin token, if a server holds this directory."""
    from meterbox.server._instance import read_admin_token, read_run_file

    info = read_run_file(data)
    if not info:
        return None
    try:
        httpx.get(f"{info['url']}/healthz", timeout=2, verify=False)  # noqa: S501 - loopback self-check
    except httpx.HTTPError:
        return None
    return str(info["url"]), read_admin_token(data)


def _admin(
    data: Path,
    method: str,
    path: str,
    content: bytes | None = None,
    content_type: str | None = None,
) -> httpx.Response:
    running = _running(data)
    assert running is not None
    url, token = running
    headers = {"Authorization": f"Bearer {token}"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = httpx.request(
        method,
        f"{url}{path}",
        content=content,
        headers=headers,
        timeout=60,
        verify=False,  # noqa: S501 - the CLI talks to its own server on this machine
    )
    if response.status_code != 200:
        body = response.json().get("error", {})
        # A request the server found unusable is the caller's input (exit 2), like the
        # same request refused locally; anything else is the server's state (exit 4).
        kind = ConfigError if response.status_code == 400 else StateError
        _fail(
            kind(
                body.get("message", "the running server refused the request"),
                found=f"HTTP {response.status_code}",
            )
        )
    return response


@app.command()
def status(
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print GET /v1/status's JSON.")] = False,
) -> None:
    """Ledger head, last receipt, report due date, seats in use, quota left."""
    if _running(data):
        info = _admin(data, "GET", "/v1/status").json()
    else:
        from meterbox.server._instance import read_status

        # A query never writes: the stopped server's files are only read.
        with _errors():
            info = read_status(data)
    if as_json:
        # The keys of GET /v1/status (docs/api.md), one JSON document on one line.
        typer.echo(json.dumps(info, sort_keys=True, default=str))
        return
    for label, value in status_lines(info):
        out.print(f"[bold]{label:<13}[/] {value}", highlight=False, soft_wrap=True)


def utc(value: object) -> str:
    """An ISO-8601 time as the CLI shows every time: UTC, seconds, ``Z``."""
    from datetime import UTC, datetime

    if not isinstance(value, str):
        return "-"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_lines(info: dict[str, Any]) -> list[tuple[str, str]]:
    """``server status`` as label/value lines: one fact per line, each under 80 columns."""
    ledger = info.get("ledger") or {}
    receipt = info.get("last_receipt")
    due = info.get("report_due") or {}
    lines = [
        ("instance", str(info.get("instance_id", "-"))),
        ("license time", utc(info.get("license_time"))),
        ("ledger seq", "-" if ledger.get("seq") is None else str(ledger["seq"])),
        ("ledger head", str(ledger.get("head") or "-")),
    ]
    if receipt:
        lines.append(("last receipt", f"{receipt.get('receipt_id')} (seq {receipt.get('seq')})"))
        lines.append(("receipt time", utc(receipt.get("vendor_time"))))
    else:
        lines.append(("last receipt", "none imported yet"))
    if not due.get("required"):
        lines.append(("report", "not required by the licenses"))
    else:
        lines.append(("report due", utc(due.get("due"))))
        state = "OVERDUE: export and send a report" if due.get("overdue") else "not overdue"
        lines.append(("report by", f"{utc(due.get('deadline'))} ({state})"))
    seats = info.get("seats_in_use") or {}
    borrowed = info.get("seats_borrowed") or {}
    for feature, in_use in sorted(seats.items()):
        lent = borrowed.get(feature, 0)
        lines.append(
            ("seats in use", f"{feature}: {in_use}" + (f" ({lent} borrowed)" if lent else ""))
        )
    if not seats:
        lines.append(("seats in use", "no floating features"))
    for name, q in sorted((info.get("quota") or {}).items()):
        if q.get("limit") is None:
            lines.append(("quota", f"{name}: {q['used']} used, unlimited"))
        else:
            lines.append(
                ("quota", f"{name}: {q['used']} of {q['limit']} used, {q['remaining']} left")
            )
    return lines


@app.command("export")
def export_cmd(
    data: DataOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="Report file to write.")],
    as_json: JsonOpt = False,
) -> None:
    """Write a signed report of everything since the last imported receipt."""
    # Checked before the report is built: a path that cannot take the file fails at
    # once, not after the ledger was read and an export record written.
    if not output.parent.is_dir():
        _fail(
            ConfigError(
                "the report's directory does not exist",
                expected="-o naming a file in an existing directory",
                found=f"{output.parent} is {'a file' if output.parent.exists() else 'missing'}",
                hint=f"create it first (mkdir -p {output.parent}) or choose another -o",
            )
        )
    if output.exists():
        _fail(
            StateError(
                "output file exists",
                expected="a new file name",
                found=str(output),
                hint="choose another -o or remove the old report",
            )
        )
    if _running(data):
        blob = _admin(data, "POST", "/v1/admin/export").content
    else:
        from meterbox.server._instance import ServerInstance

        with _errors():
            inst = ServerInstance.open(data)
            try:
                blob = inst.export_bytes()
            finally:
                inst.close()
    try:
        # O_EXCL, every byte written and synced, and removed again on failure: a full
        # disk leaves no truncated report that could be sent to the vendor.
        write_new_file(output, blob, mode=0o644)
    except OSError as exc:
        _fail(disk_error(f"the report could not be written to {output}", exc))
    if as_json:
        digest = hashlib.sha256(blob).hexdigest()
        _print_json({"report": str(output), "bytes": len(blob), "sha256": digest})
        return
    out.print(f"Report written to {output} ({len(blob)} bytes). Send it to the vendor.")


@app.command("import")
def import_cmd(
    data: DataOption,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="Receipt, top-up or license from the vendor.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Import a receipt, top-up, license notice or renewed license. Anything else is refused."""
    try:
        blob = file.read_bytes()
    except OSError as exc:
        _fail(ConfigError("cannot read the file", expected="a readable file", found=str(exc)))
    from meterbox.server._instance import check_importable

    # Refuse what cannot be imported before anything is opened: a refused import
    # leaves the data directory exactly as it was.
    with _errors():
        check_importable(data, blob)
    if _running(data):
        result = _admin(data, "POST", "/v1/admin/import", blob).json()
    else:
        from meterbox.server._instance import ServerInstance

        with _errors():
            inst = ServerInstance.open(data)
            try:
                result = asyncio.run(inst.import_bytes(blob))
            finally:
                inst.close()
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    out.print(f"Imported a {result.get('imported', 'file')}.", highlight=False)
    for key, value in result.items():
        if key != "imported":
            out.print(f"  {key.replace('_', ' ')}: {value}", highlight=False)


@app.command("cryptolens-key")
def cryptolens_key(data: DataOption, as_json: JsonOpt = False) -> None:
    """Print the public key, in the XML form Cryptolens applications embed."""
    from meterbox.compat.signer import CryptolensSigner
    from meterbox.server._instance import CRYPTOLENS_KEY

    with _errors():
        key = CryptolensSigner.load(data / CRYPTOLENS_KEY).public_key_xml()
    if as_json:
        _print_json({"public_key_xml": key})
        return
    # Printed raw: a wrapped line would corrupt the key when pasted into an application.
    sys.stdout.write(key + "\n")


@app.command()
def fingerprint(as_json: JsonOpt = False) -> None:
    """Print this machine's fingerprint, for licenses bound to a site."""
    from meterbox.server._instance import machine_fingerprint

    if as_json:
        _print_json({"fingerprint": machine_fingerprint()})
        return
    out.print(machine_fingerprint(), highlight=False)


# ------------------------------------------------------------------ site API keys
keys_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    epilog=EXIT_CODES_HELP,
    help="Site API keys: what clients present to check out seats and record usage.",
)
app.add_typer(keys_app, name="keys")


tpm_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="The instance's TPM anchor (the server must be stopped).",
)
app.add_typer(tpm_app, name="tpm")


@tpm_app.command("reenrol")
def tpm_reenrol(
    data: DataOption,
    tpm_tcti: Annotated[
        str,
        typer.Option("--tpm-tcti", envvar="METERBOX_TPM_TCTI", help="TCTI of the new TPM."),
    ] = "device:/dev/tpmrm0",
    reason: Annotated[
        str | None,
        typer.Option("--reason", help="Why the TPM changed; the vendor sees it."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Anchor the instance to a new TPM (replaced chip, new host or vTPM), on record.

    Writes a TPM_REENROLLED record naming the old and the new TPM: the vendor sees a
    warning and pins the new TPM from it. Without it a new TPM is a foreign one.
    """
    from meterbox.ledger import read_head
    from meterbox.server._instance import LEDGER_DIR, ServerInstance
    from meterbox.server._tpm import (
        prepare_reenrolment,
        read_reenrol_intent,
        reenrol_tpm,
        sealed_reenrolment,
    )

    if _running(data):
        _fail(
            StateError(
                "the server is running",
                expected="a stopped server (re-enrolment rewrites its TPM configuration)",
                found=f"a server answering for {data}",
                hint="stop it, run 'meterbox server tpm reenrol', then start it again",
            )
        )
    with _errors():
        intent = read_reenrol_intent(data)
        if intent is not None and sealed_reenrolment(intent, read_head(data / LEDGER_DIR)):
            # An earlier run sealed its record and was cut short: opening the instance
            # finishes that move; sealing another would tell the vendor of two.
            ServerInstance.open(data, attach_tpm=False).close()
            if as_json:
                _print_json({"finished": True, "ek_name": intent.ek_name, "tcti": intent.tcti})
                return
            out.print(
                f"Finished the re-enrolment an earlier run recorded: EK {intent.ek_name[:16]}... "
                f"at {intent.tcti}. No second re-enrolment is recorded; start the server as usual."
            )
            return
        # The new TPM is set up before anything in the directory changes: a TPM that
        # does not answer leaves the instance exactly as it was.
        setup = prepare_reenrolment(data, tpm_tcti)
        inst = ServerInstance.open(data, attach_tpm=False)
        try:
            record, appended = reenrol_tpm(data, inst.writer, setup, reason)
        finally:
            inst.close()
    if as_json:
        _print_json({"seq": appended.seq, **record.to_map()})
        return
    out.print(
        f"Re-enrolled on the TPM at {tpm_tcti}: EK {record.new_ek_name[:16]}... "
        f"(was {record.old_ek_name[:16]}...), counter {record.new_counter}, "
        f"ledger seq {appended.seq}. The vendor sees the change in the next report."
    )


def _admin_json(data: Path, method: str, path: str, body: Any = None) -> Any:
    content = None if body is None else json.dumps(body).encode()
    return _admin(data, method, path, content, "application/json").json()


@contextmanager
def _stopped_keys(data: Path) -> Iterator[Any]:
    """The key file of a stopped server, held against a server starting meanwhile.

    The state file's lock is the one a running server holds; taking it here means the
    file is never edited under a server that would overwrite the edit.
    """
    from meterbox.server._instance import STATE_DB
    from meterbox.server._keys import KeyStore
    from meterbox.server._state import StateStore

    if not (data / STATE_DB).exists() and not (data / "ledger").exists():
        raise StateError(
            f"no server instance in {data}",
            expected=f"a directory set up by 'meterbox server init --data {data}'",
            found="no ledger there",
        )
    store = StateStore(data / STATE_DB)
    try:
        yield KeyStore.open(data)
    finally:
        store.close()


def _key_lines(key: dict[str, Any]) -> list[str]:
    scope = []
    for kind in ("features", "meters"):
        names = key.get(kind)
        scope.append(f"{kind}: " + ("all" if names is None else ", ".join(names) or "none"))
    state = f"revoked {utc(key['revoked_at'])}" if key.get("revoked_at") else "active"
    return [
        f"{key['key_id']}  {key['name']}  ({state})",
        f"  group: {key.get('group') or '-'}; created {utc(key.get('created_at'))}",
        "  " + "; ".join(scope),
    ]


@keys_app.command("create")
def keys_create(
    data: DataOption,
    name: Annotated[str, typer.Option("--name", help="Who or what holds the key, e.g. lab-3.")],
    group: Annotated[
        str | None, typer.Option("--group", help="Group the key's holders belong to.")
    ] = None,
    feature: Annotated[
        list[str] | None,
        typer.Option("--feature", help="Allow only this feature (repeat for more)."),
    ] = None,
    meter: Annotated[
        list[str] | None,
        typer.Option("--meter", help="Allow only this meter (repeat for more)."),
    ] = None,
    no_usage: Annotated[
        bool, typer.Option("--no-usage", help="Allow no meter at all (seats only).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the key as JSON.")] = False,
) -> None:
    """Create a key; its secret is printed once and only its digest is kept."""
    meters = [] if no_usage else meter
    if _running(data):
        doc = _admin_json(
            data,
            "POST",
            "/v1/admin/keys",
            {"name": name, "group": group, "features": feature, "meters": meters},
        )
    else:
        from meterbox.clock import SystemClock

        with _errors(), _stopped_keys(data) as keys:
            new = keys.create(
                name, SystemClock().now(), group=group, features=feature, meters=meters
            )
            doc = {**new.key.summary(), "token": new.token}
    if as_json:
        typer.echo(json.dumps(doc, sort_keys=True))
        return
    for line in _key_lines(doc):
        out.print(line, highlight=False)
    out.print("Key (shown once; give it to the clients as METERBOX_API_KEY):", highlight=False)
    # Printed raw on its own line so it can be copied whole.
    sys.stdout.write(doc["token"] + "\n")


@keys_app.command("list")
def keys_list(
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as JSON.")] = False,
) -> None:
    """List the keys (never their secrets), revoked ones included."""
    if _running(data):
        keys_doc = _admin_json(data, "GET", "/v1/admin/keys")["keys"]
    else:
        from meterbox.server._keys import KeyStore

        with _errors():
            keys_doc = [k.summary() for k in KeyStore.open(data).ring]
    if as_json:
        typer.echo(json.dumps(keys_doc, sort_keys=True))
        return
    if not keys_doc:
        out.print("no API keys; create one with 'meterbox server keys create'", highlight=False)
    for key in keys_doc:
        for line in _key_lines(key):
            out.print(line, highlight=False)


@keys_app.command("revoke")
def keys_revoke(
    data: DataOption,
    ref: Annotated[str, typer.Argument(metavar="KEY", help="Key id or name.")],
) -> None:
    """Revoke a key: a running server refuses it from the next request on."""
    if _running(data):
        from urllib.parse import quote

        doc = _admin_json(data, "POST", f"/v1/admin/keys/{quote(ref, safe='')}/revoke")
    else:
        from meterbox.clock import SystemClock

        with _errors(), _stopped_keys(data) as keys:
            doc = keys.revoke(ref, SystemClock().now()).summary()
    out.print(f"revoked {doc['key_id']} ({doc['name']})", highlight=False)


# ------------------------------------------------------------------ seat removal
def _default_remover() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "admin"


@app.command("remove")
def remove_cmd(
    data: DataOption,
    lease: Annotated[str | None, typer.Option("--lease", metavar="ID", help="One lease.")] = None,
    client: Annotated[
        str | None, typer.Option("--client", metavar="ID", help="Every seat of a client id.")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", metavar="H", help="Every seat held from a host.")
    ] = None,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Why; the holder is told, the ledger keeps it.")
    ] = None,
    by: Annotated[
        str | None,
        typer.Option("--by", help="Who removes it, for the ledger. [default: your login]"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the removed leases.")] = False,
) -> None:
    """Remove seats now: recorded in the ledger; the holder's next heartbeat is told why."""
    chosen = [x for x in (lease, client, host) if x is not None]
    if len(chosen) != 1:
        _fail(
            ConfigError(
                "name the seats to remove",
                expected="exactly one of --lease ID, --client ID or --host H",
                found=f"{len(chosen)} of them",
                hint="see the holders with 'meterbox server status'; lease ids with --json",
            )
        )
    who = f"{by or _default_remover()} via cli"
    body = {"lease_id": lease, "client_id": client, "hostname": host, "by": who, "reason": reason}
    if _running(data):
        removed = _admin_json(data, "POST", "/v1/admin/seats/remove", body)["removed"]
    else:
        from meterbox.server._instance import ServerInstance

        with _errors():
            inst = ServerInstance.open(data)
            try:
                done = asyncio.run(
                    inst.service.remove(
                        who, lease_id=lease, client_id=client, hostname=host, reason=reason
                    )
                )
            finally:
                inst.close()
        removed = [
            {
                "lease_id": r.lease.lease_id,
                "feature": r.lease.feature,
                "client_id": r.lease.client_id,
                "hostname": r.lease.hostname,
            }
            for r in done
        ]
    if as_json:
        typer.echo(json.dumps(removed, sort_keys=True, default=str))
    if not removed:
        err.print("no live seat matched; nothing was removed", highlight=False)
        raise typer.Exit(1)
    if not as_json:
        for x in removed:
            out.print(
                f"removed {x['feature']} seat of {x['client_id']} "
                f"({x.get('hostname') or 'no host'}), lease {x['lease_id']}",
                highlight=False,
            )


# ------------------------------------------------------------------ seat options
@app.command("reload")
def reload_cmd(data: DataOption) -> None:
    """Read DATA/options.toml again (like SIGHUP); a bad file keeps the rules in force."""
    from meterbox.server._site_options import read_options

    # Checked here first, so a typo is reported with its line before the server sees it.
    with _errors():
        options = read_options(data)
    if _running(data):
        summary = _admin_json(data, "POST", "/v1/admin/options/reload")
    else:
        from meterbox.server._app import options_summary

        summary = options_summary(options)
        err.print("the server is not running; these options apply when it starts", highlight=False)
    if not summary["features"]:
        out.print(f"no seat options ({summary['source']})", highlight=False)
    for name, counts in summary["features"].items():
        out.print(
            f"{name}: {counts['reserve']} reservation(s), {counts['max']} maximum(s)",
            highlight=False,
        )


# ------------------------------------------------------------------ activity log
def _when_opt(value: str | None, flag: str) -> Any:
    from datetime import UTC, datetime

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        _fail(
            ConfigError(
                f"{flag} is not a time",
                expected="an ISO-8601 time, e.g. 2026-03-01T09:00Z or 2026-03-01",
                found=repr(value),
            )
        )
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command("activity")
def activity_cmd(
    data: DataOption,
    since: Annotated[str | None, typer.Option("--since", help="From this time (ISO-8601).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time.")] = None,
    feature: Annotated[str | None, typer.Option("--feature", help="One feature.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="One declared user.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="One host.")] = None,
    client: Annotated[str | None, typer.Option("--client", help="One client id.")] = None,
    event: Annotated[
        str | None,
        typer.Option(
            "--event",
            help="checkout, renew, release, expire, remove, deny, "
            "queue.wait, queue.leave or license.",
        ),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json (lines) or csv.")] = "table",
    file: Annotated[
        Path | None, typer.Option("--file", help="The log file, if not DATA/activity.jsonl.")
    ] = None,
) -> None:
    """Who had which seat: the activity log, filtered (not the billing source of truth)."""
    from meterbox.server import _activity

    if fmt not in ("table", "json", "csv"):
        _fail(ConfigError("unknown --format", expected="table, json or csv", found=repr(fmt)))
    path = file or data / _activity.ACTIVITY_FILE
    if not _activity.files(path):
        _fail(
            StateError(
                "no activity log",
                expected=f"{path} (written by 'meterbox server run')",
                found="no such file",
                hint="pass --file if the server writes it elsewhere (activity_log setting)",
            )
        )
    entries = _activity.select(
        _activity.read(path),
        since=_when_opt(since, "--since"),
        until=_when_opt(until, "--until"),
        feature=feature,
        user=user,
        host=host,
        client_id=client,
        event=event,
    )
    if fmt == "json":
        for e in entries:
            typer.echo(json.dumps(e, sort_keys=True))
        return
    if fmt == "csv":
        sys.stdout.write(_activity.to_csv(entries))
        return
    for e in entries:
        who = e.get("client_id") or e.get("license_id") or ""
        where = e.get("host") or e.get("user") or ""
        line = f"{utc(e['time'])} {e['event']:<11} {e.get('feature') or '':<10} {who} {where}"
        out.print(line.rstrip()[:80], highlight=False)
        if e.get("reason"):
            out.print(f"  {str(e['reason'])[:76]}", highlight=False)
