"""Parse what Cryptolens SDKs send: the method path and the form body.

Pure functions, no I/O. Quirks handled (all observed from the SDKs):

- paths arrive as ``/api/key/activate``, ``/api//data/IncrementIntValueToKey/``
  or ``/api//key/activate/``: segments are split on ``/``, empty segments
  dropped (collapsing ``//`` and the trailing ``/``), case folded;
- parameter names are case-insensitive (``key``/``Key``); a name given twice
  (in any case) is refused rather than guessed;
- booleans arrive as ``True``/``False``/``true``/``false``/``1``/``0``;
- ``FriendlyName=None`` (Python's ``str(None)``) means empty;
- ``SignMethod`` is ``1`` (Python, Node) or ``StringSign`` (.NET); ``0`` and
  ``LinqSign`` (the .NET models' default) name the legacy object signing.

Limits (:class:`CryptolensLimitsConfig`) bound the body, the number of fields and each field,
so a request is fully validated before anything is looked up or changed.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from meterbox.compat.errors import CryptolensRequestError

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "INT64_MAX",
    "METHODS",
    "Form",
    "CryptolensLimitsConfig",
    "normalise_method",
    "parse_form",
]

INT32_MAX: Final = 2**31 - 1
INT32_MIN: Final = -(2**31)
INT64_MAX: Final = 2**63 - 1

#: The methods served, keyed by their case-folded path.
METHODS: Final = frozenset(
    {
        "key/activate",
        "key/getkey",
        "key/deactivate",
        "data/incrementintvaluetokey",
        "data/decrementintvaluetokey",
        "data/listdataobjectstokey",
    }
)


@dataclass(frozen=True)
class CryptolensLimitsConfig:
    """Request size limits; all requests the SDKs send are far below them."""

    max_body_bytes: int = 64 * 1024
    max_fields: int = 64
    max_name_chars: int = 64
    max_value_chars: int = 4096
    max_key_chars: int = 256
    max_machine_code_chars: int = 512
    max_friendly_name_chars: int = 256
    max_floating_interval_s: int = 30 * 86_400
    max_overdraft: int = 1_000_000


def normalise_method(path: str) -> str:
    """``/api//data/IncrementIntValueToKey/`` -> ``data/incrementintvaluetokey``.

    A leading ``api`` segment is dropped so the same app works mounted at
    ``/api`` or serving the whole path. Raises for a path that names no method.
    """
    segments = [s.lower() for s in path.split("/") if s]
    if segments and segments[0] == "api":
        segments = segments[1:]
    method = "/".join(segments)
    if method not in METHODS:
        raise CryptolensRequestError(
            "unknown method",
            expected="one of " + ", ".join(sorted(METHODS)),
            found=repr(path[:100]),
            hint="this server implements only the calls the Cryptolens client SDKs make offline",
        )
    return method


def parse_form(body: bytes, limits: CryptolensLimitsConfig) -> Form:
    """Decode an ``application/x-www-form-urlencoded`` body into a case-insensitive form."""
    if len(body) > limits.max_body_bytes:
        raise CryptolensRequestError(
            "request body is too large",
            expected=f"at most {limits.max_body_bytes} bytes",
            found=f"{len(body)} bytes",
        )
    try:
        text = body.decode("ascii")
        pairs = urllib.parse.parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=limits.max_fields,
        )
    except UnicodeDecodeError:
        raise CryptolensRequestError(
            "request body is not URL-encoded UTF-8",
            expected="application/x-www-form-urlencoded text of percent-encoded UTF-8",
            found="raw non-ASCII bytes or invalid UTF-8 escapes",
        ) from None
    except ValueError:
        raise CryptolensRequestError(
            "request body has too many fields",
            expected=f"at most {limits.max_fields} fields",
            found="more",
        ) from None
    fields: dict[str, str] = {}
    for name, value in pairs:
        folded = name.lower()
        if not folded or len(folded) > limits.max_name_chars:
            raise CryptolensRequestError(
                "request has a field name of unusable length",
                expected=f"1 to {limits.max_name_chars} characters",
                found=f"{len(folded)} characters",
            )
        if len(value) > limits.max_value_chars:
            raise CryptolensRequestError(
                f"field {name!r} is too long",
                expected=f"at most {limits.max_value_chars} characters",
                found=f"{len(value)} characters",
            )
        if folded in fields:
            raise CryptolensRequestError(
                f"field {name!r} is given more than once",
                expected="each parameter once (names are case-insensitive)",
                found="a repeated name",
            )
        fields[folded] = value
    return Form(fields, limits)


class Form:
    """Case-insensitive typed access to form fields; every accessor validates."""

    def __init__(self, fields: Mapping[str, str], limits: CryptolensLimitsConfig) -> None:
        self._fields = dict(fields)
        self.limits = limits

    def raw(self, name: str) -> str | None:
        return self._fields.get(name.lower())

    def text(self, name: str, *, max_chars: int, required: bool = False) -> str:
        value = self.raw(name)
        if value is None or value == "":
            if required:
                raise CryptolensRequestError(
                    f"parameter {name} is missing",
                    expected=f"a non-empty {name}",
                    found="nothing",
                )
            return ""
        if len(value) > max_chars:
            raise CryptolensRequestError(
                f"parameter {name} is too long",
                expected=f"at most {max_chars} characters",
                found=f"{len(value)} characters",
            )
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise CryptolensRequestError(
                f"parameter {name} contains control characters",
                expected="printable text",
                found=repr(value[:40]),
            )
        return value

    def friendly_name(self) -> str:
        value = self.text("FriendlyName", max_chars=self.limits.max_friendly_name_chars)
        # The Python SDK sends str(None) when the application gives no name.
        return "" if value == "None" else value

    def integer(
        self,
        name: str,
        *,
        default: int | None = None,
        low: int = 0,
        high: int = INT32_MAX,
    ) -> int:
        value = self.raw(name)
        if value is None or value.strip() == "":
            if default is None:
                raise CryptolensRequestError(
                    f"parameter {name} is missing",
                    expected=f"an integer from {low} to {high}",
                    found="nothing",
                )
            return default
        stripped = value.strip()
        digits = stripped[1:] if stripped[:1] in "+-" else stripped
        if not digits.isascii() or not digits.isdigit() or len(digits) > 19:
            raise CryptolensRequestError(
                f"parameter {name} is not an integer",
                expected=f"an integer from {low} to {high}",
                found=repr(value[:40]),
            )
        number = int(stripped)
        if not low <= number <= high:
            raise CryptolensRequestError(
                f"parameter {name} is out of range",
                expected=f"an integer from {low} to {high}",
                found=str(number),
            )
        return number

    def boolean(self, name: str, *, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None or value == "":
            return default
        folded = value.strip().lower()
        if folded in {"true", "1"}:
            return True
        if folded in {"false", "0"}:
            return False
        raise CryptolensRequestError(
            f"parameter {name} is not a boolean",
            expected="True, False, true, false, 1 or 0",
            found=repr(value[:40]),
        )

    def sign_method(self) -> int:
        """1 for StringSign (``1`` or ``StringSign``), 0 for the legacy object signing.

        The .NET SDK's ``ActivateModel``/``KeyInfoModel`` default to ``LinqSign``.
        """
        value = (self.raw("SignMethod") or "").strip().lower()
        if value in {"1", "stringsign"}:
            return 1
        if value in {"", "0", "linqsign", "licensekey"}:
            return 0
        raise CryptolensRequestError(
            "parameter SignMethod is not known",
            expected="1 (StringSign) or 0 (LinqSign)",
            found=repr(value[:40]),
        )
