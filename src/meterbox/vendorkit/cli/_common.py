"""Shared pieces of the `meterbox vendor` commands: the one typer ``app``, options, errors.

The app is created here, not in the package ``__init__``, so that every command module
can import it (and these helpers) without importing the package that imports them.

Exit codes are the shared table of :mod:`meterbox._cli_support` (docs/api.md): 0 success,
1 refused or findings (``ingest``: the report was rejected), 2 unusable input, 3 a signature
or key does not verify, 4 local state (keys missing or already present, a file that would
be overwritten), 5 no server answered.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Final, NoReturn

import typer
from rich.console import Console

from meterbox import _cli_support
from meterbox._cli_support import EXIT_CODES_HELP, exit_code_for
from meterbox.errors import ConfigError, MeterboxError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Vendor toolkit.",
    epilog=EXIT_CODES_HELP,
)

EXIT_ERROR = _cli_support.EXIT_DENIED
EXIT_INPUT = _cli_support.EXIT_INPUT
EXIT_VERIFY = _cli_support.EXIT_VERIFY
EXIT_STATE = _cli_support.EXIT_STATE

#: Rich style of each finding severity, shared by the ingest and bill output.
SEVERITY_STYLE: Final = {"critical": "bold red", "warning": "yellow", "info": "dim"}

HomeOption = Annotated[
    Path,
    typer.Option("--home", help="Vendor home directory (keys, vendor.pub, vendor.db)."),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Database URL (postgresql://... or sqlite:///...); default HOME/vendor.db.",
    ),
]


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON object (docs/api.md).")
]


def print_json(doc: object) -> None:
    """One JSON document on stdout, keys sorted: the stable output of ``--json``."""
    typer.echo(json.dumps(doc, sort_keys=True))


def fail(error: MeterboxError) -> NoReturn:
    """Print ``error`` on stderr and exit with its code."""
    Console(stderr=True, soft_wrap=True, highlight=False).print(
        f"[bold red]error[/]: {error.render()}", markup=True
    )
    raise typer.Exit(exit_code_for(error))


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn every meterbox error inside the block into a message and an exit code."""
    try:
        yield
    except MeterboxError as error:
        fail(error)


def out() -> Console:
    """The console commands print their results on."""
    return Console(soft_wrap=True, highlight=False)


def bad_flag(flag: str, expected: str, value: str, hint: str) -> ConfigError:
    """The error for a flag whose value cannot be used."""
    return ConfigError(f"{flag} is not usable", expected=expected, found=repr(value), hint=hint)
