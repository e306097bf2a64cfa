"""One exit-code table for every command line: each error family gets its documented code."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from meterbox import errors
from meterbox._cli_support import EXIT_CODES_HELP, exit_code_for
from meterbox.cli import app
from meterbox.client.errors import LeaseLost, SpoolError
from meterbox.compat.errors import BoundExceeded, CryptolensRequestError
from meterbox.server._errors import TopupAlreadyAppliedError


@pytest.mark.parametrize(
    ("error_class", "code"),
    [
        (errors.NoSeatAvailable, 1),
        (errors.UnknownMeter, 1),
        (LeaseLost, 1),
        (BoundExceeded, 1),
        (errors.MeterboxError, 1),
        (errors.ConfigError, 2),
        (errors.FormatError, 2),
        (CryptolensRequestError, 2),
        (errors.BadRequestError, 2),
        (errors.UnauthorizedError, 2),
        (errors.IdempotencyConflictError, 2),
        (errors.VerificationError, 3),
        (errors.StateError, 4),
        (SpoolError, 4),
        (TopupAlreadyAppliedError, 4),
        (errors.ServerUnreachableError, 5),
        (errors.ProtocolError, 5),
    ],
)
def test_each_error_family_exits_with_its_documented_code(
    error_class: type[errors.MeterboxError], code: int
) -> None:
    assert exit_code_for(error_class("something went wrong")) == code


def test_a_protocol_error_counts_as_no_answer_although_it_is_a_format_error() -> None:
    err = errors.ProtocolError("the answer is not JSON")
    assert isinstance(err, errors.FormatError)
    assert exit_code_for(err) == 5


@pytest.mark.parametrize("group", [[], ["server"], ["vendor"], ["client"]])
def test_every_command_line_prints_the_exit_code_table_in_its_help(group: list[str]) -> None:
    result = CliRunner().invoke(app, [*group, "--help"], terminal_width=400)
    assert result.exit_code == 0
    assert " ".join(EXIT_CODES_HELP.split()) in " ".join(result.stdout.split())
