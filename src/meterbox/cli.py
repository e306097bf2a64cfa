"""The single ``meterbox`` command, with one sub-command group per role.

Invariant: importing this module, and running ``meterbox --help`` or ``meterbox
--version``, imports no role's code. Each group (``vendor``, ``server``, ``client``) is
imported only when a command line names it, so ``meterbox client record`` never pays for
the server's web framework or the vendor toolkit's numerical libraries. The import graph
this allows is checked by ``tests/unit/test_cli_import_graph.py``.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperGroup

from meterbox import __version__
from meterbox._cli_support import EXIT_CODES_HELP, EXIT_INPUT

# name -> (module holding a typer ``app``, one-line help shown by ``meterbox --help``)
_GROUPS: dict[str, tuple[str, str]] = {
    "vendor": ("meterbox.vendorkit.cli", "Vendor toolkit: keys, licenses, ingest, billing."),
    "server": ("meterbox.server.cli", "On-site license server."),
    "client": ("meterbox.client.cli", "Client commands for shell scripts."),
}


class _Pending(typer.core.TyperCommand):
    """Stands in for a group that is not imported yet; it carries only the help line."""


class _LazyGroup(TyperGroup):
    """A group whose sub-groups are imported when a command line selects one."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        polish(self)
        for name, (_module, help_text) in _GROUPS.items():
            self.commands[name] = _Pending(name=name, help=help_text, callback=None)

    def resolve_command(self, ctx: Any, args: list[str]) -> tuple[str | None, Any, list[str]]:
        # ``Any``: the context and command classes are typer's vendored click, which it
        # does not export under a public name.
        name, command, rest = super().resolve_command(ctx, args)
        if name is not None and isinstance(command, _Pending):
            command = self._load(name)
        return name, command, rest

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # The reader went away (``meterbox ... | head``): nothing to report.
            raise
        except ModuleNotFoundError as exc:
            # A lean install (``pip install meterbox``: the client) running a command of
            # a role whose extra is not installed.
            _report_missing_extra(exc)
        except OSError as exc:
            # The last net under every command: a path the user named that turned out
            # to be the wrong kind (a file where a directory belongs), missing or not
            # permitted. Commands check what they can first; whatever the operating
            # system refuses beyond that is still the user's input, not a crash.
            _report_os_error(exc)

    def _load(self, name: str) -> Any:
        module = importlib.import_module(_GROUPS[name][0])
        command = typer.main.get_command(module.app)
        command.name = name
        command.help = _GROUPS[name][1]
        polish(command)
        self.commands[name] = command
        return command


# Option names whose path is a directory, shown as DIR rather than FILE.
_DIR_OPTIONS = frozenset({"data", "home"})


def polish(command: Any) -> None:
    """Readable ``--help`` for ``command`` and everything under it.

    typer prints each parameter's Python type (``<bool>``, ``<list[str]>``, ``<path>``)
    and the argument as ``{report}``. Flags get no metavar, paths FILE or DIR, anything
    else the parameter's name in capitals, unless the command set one itself.
    """
    help_option = command.get_help_option(command.context_class(command))
    if help_option is not None:
        help_option.metavar = ""
    for param in command.params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
        elif param.metavar is None:
            param.metavar = _metavar(param)
    for sub in getattr(command, "commands", {}).values():
        if not isinstance(sub, _Pending):
            polish(sub)


def _metavar(param: Any) -> str:
    name = str(param.name or "value")
    desc = getattr(param, "type_descriptor", None)
    if param.param_type_name == "option" and desc is not None and desc.is_path:
        return "DIR" if name in _DIR_OPTIONS else "FILE"
    return name.upper().replace("-", "_")


def _report_os_error(exc: OSError) -> NoReturn:
    from meterbox.errors import ConfigError

    where = exc.filename if exc.filename is not None else "a path"
    error = ConfigError(
        "a file or directory given to this command cannot be used",
        expected="paths of the right kind (file or directory) that this user may use",
        found=f"{where}: {exc.strerror or exc}",
        hint="check the path named above, what it is (ls -ld) and its permissions",
    )
    typer.echo(f"error: {error.render()}", err=True)
    raise typer.Exit(EXIT_INPUT)


_SERVER_MODULES = (
    "cryptography", "msgpack", "fastapi", "starlette", "uvicorn", "jinja2", "multipart",
    "python_multipart", "prometheus_client", "pythonjsonlogger", "pydantic_settings",
    "dotenv", "httptools", "uvloop",
)  # fmt: skip
#: Top-level modules of each extra's packages (pyproject.toml), for the hint.
_EXTRA_OF: dict[str, str] = {
    **dict.fromkeys(_SERVER_MODULES, "server"),
    **dict.fromkeys(("sqlalchemy", "sklearn", "numpy", "scipy"), "vendor"),
    "psycopg": "postgres",
    "tpm2_pytss": "tpm",
}


def _report_missing_extra(exc: ModuleNotFoundError) -> NoReturn:
    from meterbox._cli_support import EXIT_STATE
    from meterbox.errors import StateError

    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF.get(top)
    if extra is None:
        raise exc  # not a package of an extra: a broken installation, shown as it is
    error = StateError(
        f"this command needs the '{extra}' extra of meterbox, which is not installed",
        expected=f"the Python package {top!r}",
        found="a meterbox installed without it",
        hint=f"install it with pip install 'meterbox[{extra}]' "
        "(offline: from a wheelhouse, docs/deploy.md)",
    )
    typer.echo(f"error: {error.render()}", err=True)
    raise typer.Exit(EXIT_STATE)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"meterbox {__version__}")
        raise typer.Exit


app = typer.Typer(
    cls=_LazyGroup,
    help="meterbox: offline metered and floating licensing.",
    no_args_is_help=True,
    add_completion=False,
    epilog=EXIT_CODES_HELP,
)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the meterbox version and exit.",
        ),
    ] = False,
) -> None:
    """meterbox: offline metered and floating licensing."""


def group_app(name: str) -> typer.Typer:
    """The typer app of one role's group (imports it), for tests and embedding."""
    module = importlib.import_module(_GROUPS[name][0])
    app_: typer.Typer = module.app
    return app_


def main() -> None:
    app()
