"""`meterbox server` commands: init, run, status, export, import, cryptolens-key, fingerprint.

Settings come from flags, then METERBOX_* environment variables, then a TOML file
given with ``--config`` (keys named like the long flags, e.g. ``port = 8080``).
Exit codes are the shared table of :mod:`meterbox._cli_support` (docs/api.md).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console

from meterbox._cli_support import EXIT_CODES_HELP, exit_code_for
from meterbox.errors import ConfigError, MeterboxError, StateError

app = typer.Typer(no_args_is_help=True, add_completion=False, epilog=EXIT_CODES_HELP)
out = Console()
err = Console(stderr=True)

DataOption = Annotated[
    Path, typer.Option("--data", envvar="METERBOX_DATA", help="Server data directory.")
]


def _fail(exc: MeterboxError) -> NoReturn:
    err.print(f"[bold red]error:[/] {exc.render()}", highlight=False)
    raise typer.Exit(exit_code_for(exc))


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except MeterboxError as exc:
        _fail(exc)


def _config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        _fail(
            ConfigError(
                "cannot read the configuration file",
                expected="a readable TOML file",
                found=f"{path}: {exc}",
            )
        )


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
) -> None:
    """Create a server instance: identity, ledger genesis, licenses, admin token."""
    from meterbox.server._instance import init_server
    from meterbox.tpm import TpmMode

    with _errors():
        result = init_server(
            data,
            vendor_pub=vendor_key,
            license_files=license_files,
            tpm=TpmMode.parse(tpm),
            tpm_tcti=tpm_tcti,
        )
    out.print(f"Server instance [bold]{result.instance_id}[/] created in {data}")
    out.print(f"Licenses: {', '.join(result.licenses)}")
    out.print(f"TPM: {result.tpm}")
    out.print(f"Admin token (also in {data / 'admin.token'}, mode 0600):")
    out.print(result.admin_token, highlight=False, soft_wrap=True)


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str) -> dict[str, Any]:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLogFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": _JsonLogFormatter}},
        "handlers": {"h": {"class": "logging.StreamHandler", "formatter": "json"}},
        "loggers": {
            "uvicorn": {"handlers": ["h"], "level": level.upper(), "propagate": False},
            # Access logs carry no tokens (bearer tokens travel in headers, never in paths).
            "uvicorn.access": {"handlers": ["h"], "level": level.upper(), "propagate": False},
        },
    }


@app.command()
def run(
    data: DataOption,
    host: Annotated[str | None, typer.Option(envvar="METERBOX_HOST")] = None,
    port: Annotated[int | None, typer.Option(envvar="METERBOX_PORT")] = None,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", envvar="METERBOX_TLS_CERT")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", envvar="METERBOX_TLS_KEY")] = None,
    config: Annotated[Path | None, typer.Option("--config", envvar="METERBOX_CONFIG")] = None,
    log_level: Annotated[str, typer.Option(envvar="METERBOX_LOG_LEVEL")] = "info",
    force_recover: Annotated[bool, typer.Option("--force-recover")] = False,
) -> None:
    """Serve until SIGTERM or SIGINT, then finish in-flight requests, sync and stop."""
    import uvicorn

    from meterbox.server._runtime import build_server
    from meterbox.server._uvicorn import GracefulServer, HeaderTimeoutProtocol

    conf = _config(config)
    host = host or str(conf.get("host", "127.0.0.1"))
    port = port if port is not None else conf.get("port", 8080)
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        _fail(
            ConfigError(
                "the port is not usable",
                expected="a TCP port number from 1 to 65535",
                found=repr(port),
                hint="pass --port, METERBOX_PORT or 'port = 8080' in the configuration file",
            )
        )
    tls_cert = tls_cert or (Path(conf["tls_cert"]) if "tls_cert" in conf else None)
    tls_key = tls_key or (Path(conf["tls_key"]) if "tls_key" in conf else None)
    if (tls_cert is None) != (tls_key is None):
        _fail(
            ConfigError(
                "TLS needs both a certificate and a key",
                expected="--tls-cert and --tls-key together",
                found="only one of them",
            )
        )
    log_config = _setup_logging(log_level)
    with _errors():
        built = build_server(data, force_recover=force_recover)
    scheme = "https" if tls_cert else "http"
    uv_config = uvicorn.Config(
        built.app,
        host=host,
        port=port,
        log_config=log_config,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
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
    from meterbox.server._instance import RUN_FILE, write_run_file

    write_run_file(data, f"{scheme}://{host}:{port}")
    try:
        server.run()
    finally:
        built.close()
        (data / RUN_FILE).unlink(missing_ok=True)


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


def _admin(data: Path, method: str, path: str, content: bytes | None = None) -> httpx.Response:
    running = _running(data)
    assert running is not None
    url, token = running
    response = httpx.request(
        method,
        f"{url}{path}",
        content=content,
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
        verify=False,  # noqa: S501 - the CLI talks to its own server on this machine
    )
    if response.status_code != 200:
        body = response.json().get("error", {})
        _fail(
            StateError(
                body.get("message", "the running server refused the request"),
                found=f"HTTP {response.status_code}",
            )
        )
    return response


@app.command()
def status(
    data: DataOption,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Ledger head, last receipt, report due date, seats in use, quota left."""
    if _running(data):
        info = _admin(data, "GET", "/v1/status").json()
    else:
        from meterbox.server._instance import ServerInstance

        with _errors():
            inst = ServerInstance.open(data)
            try:
                info = inst.service.status()
            finally:
                inst.close()
    if as_json:
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]instance[/]     {info['instance_id']}")
    out.print(f"[bold]ledger head[/]  seq {info['ledger']['seq']}  {info['ledger']['head']}")
    out.print(f"[bold]last receipt[/] {info['last_receipt']}")
    out.print(f"[bold]report due[/]   {info['report_due']}")
    out.print(f"[bold]seats in use[/] {info['seats_in_use']}")
    for name, q in info["quota"].items():
        out.print(f"[bold]quota[/]        {name}: used {q['used']} of {q['limit']}")


@app.command("export")
def export_cmd(
    data: DataOption,
    output: Annotated[Path, typer.Option("-o", "--output", help="Report file to write.")],
) -> None:
    """Write a signed report of everything since the last imported receipt."""
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
    output.write_bytes(blob)
    out.print(f"Report written to {output} ({len(blob)} bytes). Send it to the vendor.")


@app.command("import")
def import_cmd(data: DataOption, file: Annotated[Path, typer.Argument()]) -> None:
    """Import a receipt, top-up or renewed license. Anything else is refused."""
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
    out.print(f"Imported {result.get('imported')}: {json.dumps(result)}")


@app.command("cryptolens-key")
def cryptolens_key(data: DataOption) -> None:
    """Print the public key, in the XML form Cryptolens applications embed."""
    from meterbox.compat.signer import CryptolensSigner
    from meterbox.server._instance import CRYPTOLENS_KEY

    with _errors():
        key = CryptolensSigner.load(data / CRYPTOLENS_KEY).public_key_xml()
    # Printed raw: a wrapped line would corrupt the key when pasted into an application.
    sys.stdout.write(key + "\n")


@app.command()
def fingerprint() -> None:
    """Print this machine's fingerprint, for licenses bound to a site."""
    from meterbox.server._instance import machine_fingerprint

    out.print(machine_fingerprint(), highlight=False)
