"""`meterbox client` commands, for shell scripts.

Exit codes are the shared table of :mod:`meterbox._cli_support` (docs/api.md,
docs/client.md):

- 0: done (also: usage recorded into the spool while the server was unreachable);
- 1: the license refused (no seat, quota used up, report overdue, expired, unknown
  feature or meter), or ``flush`` moved events to the dead-letter table;
- 2: bad input (arguments, URL, a request the server calls malformed);
- 4: the local spool cannot be opened or written;
- 5: no server answered as docs/api.md says (unreachable, 503, or a foreign answer).

Results go to stdout as JSON (``checkout`` prints only the lease id unless
``--json``); messages go to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from meterbox._cli_support import EXIT_CODES_HELP, EXIT_DENIED, EXIT_UNREACHABLE, exit_code_for
from meterbox.client._sync import Client
from meterbox.errors import MeterboxError

app = typer.Typer(no_args_is_help=True, add_completion=False, epilog=EXIT_CODES_HELP)

T = TypeVar("T")

UrlOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--url",
        help="Server URL; repeat for failover. Default: $METERBOX_URL (comma-separated).",
    ),
]
SpoolOpt = Annotated[
    Path | None,
    typer.Option("--spool", help="Spool file. Default: $METERBOX_SPOOL or the user data dir."),
]
ClientIdOpt = Annotated[
    str | None,
    typer.Option(
        "--client-id",
        help="Client identity; a second checkout by the same identity renews its seat. "
        "Default: HOST/USER, the same for every run by this user on this host.",
    ),
]

ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="METERBOX_API_KEY",
        show_envvar=False,
        help="Site API key from the server's administrator. Default: $METERBOX_API_KEY.",
    ),
]


def make_client(
    urls: list[str] | None, spool: Path | None, client_id: str | None, api_key: str | None
) -> Client:
    """Build the client for one command (tests replace this to inject a transport)."""
    return Client(urls or None, spool=spool, client_id=client_id, api_key=api_key)


def _run(urls: list[str] | None, spool: Path | None, client_id: str | None,
         action: Callable[[Client], T], api_key: str | None = None) -> T:  # fmt: skip
    try:
        with make_client(urls, spool, client_id, api_key) as client:
            return action(client)
    except MeterboxError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exit_code_for(exc)) from None


def _json_default(value: object) -> str:
    # Times in the one form the API uses: ISO-8601 UTC with "Z".
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


#: Every client command prints JSON on stdout; ``--json`` is accepted by each, so that
#: scripts can pass it to every meterbox command alike (checkout prints the bare lease
#: id without it).
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON (the default here).")
]


def _print(value: Any) -> None:
    typer.echo(json.dumps(_jsonable(value), sort_keys=True))


@app.command()
def checkout(
    feature: Annotated[str, typer.Argument(help="Feature to check out, e.g. cad.")],
    url: UrlOpt = None,
    client_id: ClientIdOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole lease.")] = False,
    api_key: ApiKeyOpt = None,
    wait: Annotated[
        float | None,
        typer.Option("--wait", metavar="SECONDS", help="Queue up to this long for a free seat."),
    ] = None,
) -> None:
    """Check out a seat and print its lease id. Heartbeat or release it yourself."""
    lease = _run(url, None, client_id, lambda c: c.checkout(feature, wait=wait), api_key)
    if as_json:
        _print(asdict(lease))
    else:
        typer.echo(lease.lease_id)
    typer.echo(f"lease expires in {lease.lease_seconds:g} s unless renewed", err=True)


@app.command()
def heartbeat(
    lease_id: Annotated[str, typer.Argument(help="Lease id printed by checkout.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Renew a lease (with the key that checked it out). Exit 1 if the lease is gone."""
    lease = _run(url, None, None, lambda c: c.heartbeat(lease_id), api_key)
    _print(asdict(lease))


@app.command()
def release(
    lease_id: Annotated[str, typer.Argument(help="Lease id printed by checkout.")],
    url: UrlOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Release a lease (releasing twice is fine)."""
    released = _run(url, None, None, lambda c: c.release(lease_id), api_key)
    _print({"released": released})


@app.command()
def record(
    meter: Annotated[str, typer.Argument(help="Meter name, e.g. solver-runs.")],
    amount: Annotated[int, typer.Argument(help="Units to record (positive integer).")] = 1,
    key: Annotated[
        str | None,
        typer.Option("--key", help="Idempotency key; pass the same key when retrying a script."),
    ] = None,
    url: UrlOpt = None,
    spool: SpoolOpt = None,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Record usage; if the server is unreachable, spool it and still exit 0."""
    result = _run(
        url, spool, client_id, lambda c: c.record(meter, amount, idempotency_key=key), api_key
    )
    if result.spooled:
        typer.echo(
            "server unreachable: usage spooled; it is delivered by a later record "
            "or by 'meterbox client flush'",
            err=True,
        )
    _print(asdict(result))


@app.command()
def balance(
    meter: Annotated[str | None, typer.Argument(help="One meter; default all.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print meter balances as JSON."""
    if meter is None:
        _print([asdict(b) for b in _run(url, None, None, lambda c: c.balances())])
    else:
        _print(asdict(_run(url, None, None, lambda c: c.balance(meter))))


@app.command()
def flush(
    url: UrlOpt = None,
    spool: SpoolOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Deliver spooled usage now. Exit 5 if events remain because no server answered."""
    result = _run(url, spool, None, lambda c: c.flush(), api_key)
    _print(
        {
            "delivered": result.delivered,
            "pending": result.pending,
            "dead_lettered": result.dead_lettered,
            "dead_letters": [{"key": d.event.idempotency_key, "reason": d.reason}
                             for d in result.dead_letters],
            "stopped": result.stopped,
        }
    )  # fmt: skip
    if result.dead_letters:
        typer.echo(f"{result.dead_lettered} event(s) refused and kept as dead letters", err=True)
        raise typer.Exit(EXIT_DENIED)
    if result.pending:
        typer.echo(f"{result.pending} event(s) still spooled: {result.stopped}", err=True)
        raise typer.Exit(EXIT_UNREACHABLE)


def _borrow_json(borrow: Any) -> dict[str, Any]:
    t = borrow.token
    return {
        "lease_id": t.lease_id,
        "feature": t.feature,
        "license_id": t.license_id,
        "client_id": t.client_id,
        "issued": t.issued,
        "expires": t.expires,
    }


@app.command()
def borrow(
    feature: Annotated[str, typer.Argument(help="Feature to borrow, e.g. cad.")],
    hours: Annotated[
        int, typer.Option("--hours", min=1, help="How long to keep the seat with no server.")
    ],
    url: UrlOpt = None,
    spool: SpoolOpt = None,
    client_id: ClientIdOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Borrow a seat for use with no server, up to the license's max_borrow_hours.

    The borrow token is kept beside the spool (borrows/FEATURE.borrow) and is usable on
    this machine only; `meterbox client borrowed FEATURE` checks it offline.
    """
    got = _run(url, spool, client_id, lambda c: c.borrow(feature, hours=hours), api_key)
    _print(_borrow_json(got))
    typer.echo(f"borrowed until {_json_default(got.expires_at)}; works offline here", err=True)


@app.command()
def borrowed(
    feature: Annotated[str, typer.Argument(help="Feature borrowed, e.g. cad.")],
    spool: SpoolOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check this machine's borrowed seat offline (no server). Exit 1 once it has expired."""
    # No request is sent: the URL only satisfies the client's configuration.
    got = _run(["http://offline.invalid"], spool, None, lambda c: c.borrowed(feature))
    _print(_borrow_json(got))


@app.command("return")
def return_(
    feature: Annotated[str, typer.Argument(help="Feature borrowed, e.g. cad.")],
    url: UrlOpt = None,
    spool: SpoolOpt = None,
    as_json: JsonOpt = False,
    api_key: ApiKeyOpt = None,
) -> None:
    """Give a borrowed seat back early; its token on this machine is deleted."""
    returned = _run(url, spool, None, lambda c: c.return_borrow(feature), api_key)
    _print({"returned": returned})
