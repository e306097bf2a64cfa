"""The one exit-code table every meterbox command line uses.

``meterbox server``, ``meterbox vendor`` and ``meterbox client`` all turn an error
into an exit code through :func:`exit_code_for`, so a script reads the same number
the same way whichever command it ran. The table is documented in docs/api.md
("Exit codes") and in each command's help text (:data:`EXIT_CODES_HELP`).

Invariant: the codes below are stable; a new kind of failure gets a new number
rather than reusing one.
"""

from __future__ import annotations

from typing import Final

from meterbox.errors import (
    BadRequestError,
    ConfigError,
    FormatError,
    IdempotencyConflictError,
    LicenseDenied,
    MeterboxError,
    ProtocolError,
    ServerUnreachableError,
    StateError,
    UnauthorizedError,
    VerificationError,
)

__all__ = [
    "EXIT_CODES_HELP",
    "EXIT_DENIED",
    "EXIT_INPUT",
    "EXIT_OK",
    "EXIT_STATE",
    "EXIT_UNREACHABLE",
    "EXIT_VERIFY",
    "exit_code_for",
]

#: Success.
EXIT_OK: Final = 0
#: Refused or found wanting: a license decision, an ingest that found a problem,
#: events moved to dead letters, or any error not named below.
EXIT_DENIED: Final = 1
#: Unusable input: a flag, file, URL or request that cannot be used as given
#: (click's own usage errors also exit 2).
EXIT_INPUT: Final = 2
#: A signature, authentication tag, key or hash chain does not verify.
EXIT_VERIFY: Final = 3
#: Local state: missing, locked, already present, or wrongly protected.
EXIT_STATE: Final = 4
#: No server answered as docs/api.md says (connection error, timeout, 503, a
#: foreign answer); retrying later may succeed.
EXIT_UNREACHABLE: Final = 5

#: The table in one line, for the help epilog of every command line.
EXIT_CODES_HELP: Final = (
    "Exit codes: 0 ok, 1 refused or findings, 2 unusable input, 3 verification failed, "
    "4 local state, 5 no server answered."
)

# Order matters: the first class that matches wins. ProtocolError is a FormatError,
# but for a script it means the same as no answer at all, so it comes first.
_TABLE: Final[tuple[tuple[type[MeterboxError] | tuple[type[MeterboxError], ...], int], ...]] = (
    ((ServerUnreachableError, ProtocolError), EXIT_UNREACHABLE),
    (LicenseDenied, EXIT_DENIED),
    (
        (ConfigError, FormatError, BadRequestError, UnauthorizedError, IdempotencyConflictError),
        EXIT_INPUT,
    ),
    (VerificationError, EXIT_VERIFY),
    (StateError, EXIT_STATE),
)


def exit_code_for(error: MeterboxError) -> int:
    """The process exit code for ``error``; an unnamed meterbox error exits 1."""
    for classes, code in _TABLE:
        if isinstance(error, classes):
            return code
    return EXIT_DENIED
