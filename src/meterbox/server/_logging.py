"""The server's logs: JSON lines (python-json-logger) or text, UTC times, no secrets.

Every line, in either format, has an ISO-8601 UTC time with milliseconds and ``Z``
(``2026-01-05T10:00:00.123Z``), the level, the logger and the message; JSON lines
carry the record's context (``extra=``) as keys. Durations are integers with their
unit in the key (``duration_ms``, ``step_ms``).

Secrets are never logged. Requests are logged by :class:`AccessLog` (uvicorn's own
access log is off) with the path only: query strings (the Cryptolens API's ``token``
and ``Key``) and headers (the admin token, API keys) are never read into a record,
and lease ids travel in bodies, which are not logged. As a second line of defence,
:class:`RedactSecrets` replaces the value of any context key that names a secret.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LogFormat = Literal["json", "text"]
ACCESS_LOGGER: Final = "meterbox.http"
#: Context keys whose values are never written, whoever passes them.
SECRET_KEYS: Final = frozenset(
    {"admin_token", "token", "api_key", "authorization", "lease_id", "license_key", "key"}
)
REDACTED: Final = "[redacted]"
#: uvicorn's duplicate of each message with terminal colours; noise in a log file.
_DROPPED: Final = ("color_message", "taskName")


def utc_iso(created: float) -> str:
    """A record time as ISO-8601 UTC with milliseconds: ``2026-01-05T10:00:00.123Z``."""
    stamp = datetime.fromtimestamp(created, UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


class RedactSecrets(logging.Filter):
    """Replace the value of every context key named in :data:`SECRET_KEYS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in SECRET_KEYS:
            if key in record.__dict__:
                setattr(record, key, REDACTED)
        return True


class JsonLines(JsonFormatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then context."""

    def __init__(self) -> None:
        super().__init__(
            reserved_attrs=[*RESERVED_ATTRS, *_DROPPED],
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["ts"] = utc_iso(record.created)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["msg"] = record.getMessage()
        super().add_fields(log_data, record, message_dict)
        log_data.pop("message", None)


class TextLines(logging.Formatter):
    """``TIME LEVEL LOGGER: message key=value ...``, one line per record."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        context = {
            k: v
            for k, v in record.__dict__.items()
            if k not in RESERVED_ATTRS and k not in _DROPPED and not k.startswith("_")
        }
        line = f"{utc_iso(record.created)} {super().format(record)}"
        if context:
            line += " " + " ".join(f"{k}={v}" for k, v in sorted(context.items()))
        # One record is one line: a message or traceback with newlines is folded.
        return line.replace("\n", "\\n")


def log_config(level: str, fmt: LogFormat) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` dictionary of the server (and of uvicorn)."""
    formatter = JsonLines if fmt == "json" else TextLines
    loggers = ("", "uvicorn", "uvicorn.error", "meterbox", ACCESS_LOGGER)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"lines": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "lines",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": ["stderr"], "level": level.upper(), "propagate": False}
            for name in loggers
        },
    }


class AccessLog:
    """ASGI middleware: one record per HTTP request, with an integer duration.

    Context: ``method``, ``path`` (without the query string), ``status``,
    ``duration_ms`` and ``client`` (the peer address). Nothing else of the request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic_ns()
        status = 500  # an exception before the response started is answered 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = scope.get("client")
            self.log.info(
                "%s %s %d",
                scope.get("method", "?"),
                scope.get("path", "?"),
                status,
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": (time.monotonic_ns() - start) // 1_000_000,
                    "client": client[0] if client else None,
                },
            )
