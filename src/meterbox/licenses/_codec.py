"""Strict JSON helpers shared by every signed document.

Invariants:

* ``canonical_json`` is the only way payload bytes are produced: sorted keys, no
  insignificant whitespace, UTF-8, no NaN or infinity. A given value has exactly one
  encoding, so a signer and a test-vector generator always agree byte for byte.
* ``strict_loads`` refuses duplicate object keys, NaN/Infinity and non-UTF-8 input, and
  raises :class:`~meterbox.errors.FormatError` for every malformed input (never
  ``ValueError`` or ``UnicodeDecodeError``).
* ``Fields`` reads one JSON object field by field with exact types (a ``bool`` is not an
  ``int``) and refuses unknown fields once the reader is done, so a document cannot carry
  data that the code silently ignores.
* Timestamps are UTC, written ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``; parsing accepts only
  the form that ``format_time`` writes, so the text round-trips exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from meterbox.errors import FormatError

#: Identifiers (license ids, feature and meter names, ...): printable, short, no spaces.
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
HEX_RE: Final = re.compile(r"[0-9a-f]*")
MAX_TEXT: Final = 1000
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z")


def canonical_json(value: Any) -> bytes:
    """The one byte encoding of ``value``: sorted keys, compact, UTF-8."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _reject_constant(name: str) -> NoReturn:
    raise FormatError(
        "JSON contains a non-finite number",
        expected="finite numbers only",
        found=name,
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(
                "JSON object has a duplicate key",
                expected="each key at most once",
                found=f"{key!r} twice",
                hint="The file was edited or produced by a foreign tool; re-issue it",
            )
        out[key] = value
    return out


def strict_loads(data: bytes, what: str) -> Any:
    """Parse UTF-8 JSON strictly; every failure is a :class:`FormatError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(
            f"{what} is not UTF-8 text",
            expected="UTF-8 encoded JSON",
            found=f"an invalid byte at offset {exc.start}",
            hint="Check that the file was copied in binary mode",
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{what} is not valid JSON",
            expected="a complete JSON document",
            found=f"{exc.msg} at line {exc.lineno} column {exc.colno}",
            hint="The file may be truncated or edited; copy it again from the vendor",
        ) from None
    except RecursionError:
        raise FormatError(
            f"{what} is nested too deeply",
            expected="a flat JSON document",
            found="nesting beyond the parser's limit",
        ) from None


def format_time(value: datetime) -> str:
    """Render an aware UTC datetime in the one accepted form."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def parse_time(text: str, what: str) -> datetime:
    if not _TIME_RE.fullmatch(text):
        raise FormatError(
            f"{what} is not a UTC timestamp",
            expected="YYYY-MM-DDTHH:MM:SS[.ffffff]Z",
            found=repr(text[:40]),
        )
    try:
        value = datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)
    except ValueError:
        raise FormatError(
            f"{what} is not a real calendar time",
            expected="a valid date and time",
            found=repr(text),
        ) from None
    if format_time(value) != text:
        # Only ".000000" can get here; one value must have one encoding.
        raise FormatError(
            f"{what} is not in canonical form",
            expected=repr(format_time(value)),
            found=repr(text),
        )
    return value


def check_utc(value: object, what: str) -> datetime:
    """Validate a constructor argument: an aware datetime at UTC offset zero."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise FormatError(
            f"{what} must be a timezone-aware UTC datetime",
            expected="datetime with tzinfo=UTC",
            found=repr(value),
        )
    offset = value.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise FormatError(f"{what} must be in UTC", expected="UTC offset 0", found=str(offset))
    return value.astimezone(UTC)


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise FormatError(
            f"{what} is not a valid name",
            expected="1-64 characters of A-Z a-z 0-9 _ . : - starting with a letter or digit",
            found=repr(value)[:80],
        )
    return value


def check_text(value: object, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise FormatError(
            f"{what} must be {'a' if allow_empty else 'a non-empty'} string",
            expected="text",
            found=repr(value)[:80],
        )
    # Lone surrogates are refused too: they have no UTF-8 encoding, so a document
    # holding one could not be signed (or would fail to encode far from its cause).
    if len(value) > MAX_TEXT or any(
        ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in value
    ):
        raise FormatError(
            f"{what} is not plain text",
            expected=f"at most {MAX_TEXT} characters without control characters or lone surrogates",
            found=f"{len(value)} characters",
        )
    return value


def check_int(value: object, what: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{what} must be an integer", expected="an integer", found=repr(value))
    if not minimum <= value <= maximum:
        raise FormatError(
            f"{what} is out of range",
            expected=f"{minimum} <= value <= {maximum}",
            found=str(value),
        )
    return value


def check_hex(value: object, what: str, *, nbytes: int) -> str:
    if not isinstance(value, str) or len(value) != 2 * nbytes or not HEX_RE.fullmatch(value):
        raise FormatError(
            f"{what} is not lower-case hex of {nbytes} bytes",
            expected=f"{2 * nbytes} characters 0-9a-f",
            found=repr(value)[:80],
        )
    return value


def check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FormatError(
            f"{what} has an unknown value",
            expected=" or ".join(repr(c) for c in choices),
            found=repr(value)[:80],
        )
    assert isinstance(value, str)
    return value


class Fields:
    """Reads the fields of one JSON object with exact types, then refuses leftovers."""

    def __init__(self, value: object, what: str) -> None:
        if not isinstance(value, dict):
            raise FormatError(
                f"{what} is not a JSON object",
                expected="an object {...}",
                found=type(value).__name__,
            )
        self._data: dict[str, Any] = dict(value)
        self._what = what

    def _name(self, key: str) -> str:
        return f"{self._what} field {key!r}"

    def _take(self, key: str) -> Any:
        if key not in self._data:
            raise FormatError(
                f"{self._what} lacks a required field",
                expected=f"field {key!r}",
                found="no such field",
            )
        return self._data.pop(key)

    def has(self, key: str) -> bool:
        return key in self._data

    def raw(self, key: str) -> Any:
        return self._take(key)

    def text(self, key: str, *, allow_empty: bool = False) -> str:
        return check_text(self._take(key), self._name(key), allow_empty=allow_empty)

    def name(self, key: str) -> str:
        return check_name(self._take(key), self._name(key))

    def integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int:
        return check_int(self._take(key), self._name(key), minimum=minimum, maximum=maximum)

    def opt_integer(self, key: str, *, minimum: int = 0, maximum: int = 2**63 - 1) -> int | None:
        value = self._take(key)
        if value is None:
            return None
        return check_int(value, self._name(key), minimum=minimum, maximum=maximum)

    def boolean(self, key: str) -> bool:
        value = self._take(key)
        if not isinstance(value, bool):
            raise FormatError(
                f"{self._name(key)} must be true or false", expected="a boolean", found=repr(value)
            )
        return value

    def time(self, key: str) -> datetime:
        value = self._take(key)
        if not isinstance(value, str):
            raise FormatError(
                f"{self._name(key)} must be a timestamp string",
                expected="YYYY-MM-DDTHH:MM:SSZ",
                found=repr(value)[:80],
            )
        return parse_time(value, self._name(key))

    def opt_time(self, key: str) -> datetime | None:
        if self._data.get(key, 0) is None:
            self._data.pop(key)
            return None
        return self.time(key)

    def opt_text(self, key: str) -> str | None:
        if self._data.get(key, 0) is None:
            self._data.pop(key)
            return None
        return self.text(key)

    def hex(self, key: str, *, nbytes: int) -> str:
        return check_hex(self._take(key), self._name(key), nbytes=nbytes)

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        return check_choice(self._take(key), self._name(key), choices)

    def obj(self, key: str) -> dict[str, Any]:
        value = self._take(key)
        if not isinstance(value, dict):
            raise FormatError(
                f"{self._name(key)} must be an object",
                expected="{...}",
                found=type(value).__name__,
            )
        return value

    def array(self, key: str) -> list[Any]:
        value = self._take(key)
        if not isinstance(value, list):
            raise FormatError(
                f"{self._name(key)} must be an array",
                expected="[...]",
                found=type(value).__name__,
            )
        return value

    def done(self) -> None:
        if self._data:
            extra = ", ".join(sorted(repr(k) for k in self._data))
            raise FormatError(
                f"{self._what} has unknown fields",
                expected="only the fields defined by its format version",
                found=extra[:200],
                hint="A newer format needs a newer meterbox",
            )


def freeze_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy with keys in sorted order, so equal values compare and print alike."""
    from types import MappingProxyType

    return MappingProxyType({k: value[k] for k in sorted(value)})
