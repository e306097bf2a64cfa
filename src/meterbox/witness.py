"""The ledger head a server hands out and a client hands back (docs/spec/witness.md). Pure.

Every acknowledgement of a state-changing request carries the head of the server's
ledger in a ``Meterbox-Head`` header; the client SDK keeps the latest one durably and
sends it back with its next request as ``Meterbox-Witness``. Both headers carry one
value of the same grammar, version 1::

    head     = "1" ":" instance ":" seq ":" hash
    instance = 32 lower-case hex digits (the ledger's instance id)
    seq      = decimal, no leading zeros, at most 2^63 - 1
    hash     = 64 lower-case hex digits (the chain hash h_seq, ledger.md)

Invariants:

* :func:`parse_head` accepts exactly the grammar above and nothing longer than
  :data:`MAX_HEAD_LEN` characters; anything else raises
  :class:`~meterbox.errors.FormatError` (an unknown version
  :class:`~meterbox.errors.UnknownVersionError`) saying what was expected and found;
* ``parse_head(h.to_header()) == h`` for every :class:`WitnessHead` ``h``, and
  ``to_header`` of a parsed value returns the value byte for byte.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Final

from meterbox.errors import FormatError, UnknownVersionError

#: The response header a server sets on every acknowledgement of a state change.
HEAD_HEADER: Final = "Meterbox-Head"
#: The request header a client sends with the latest head it holds for that server.
WITNESS_HEADER: Final = "Meterbox-Witness"
VERSION: Final = "1"
INSTANCE_HEX_LEN: Final = 32
HASH_HEX_LEN: Final = 64
MAX_SEQ: Final = 2**63 - 1
#: ``1:`` + instance + ``:`` + 19 digits + ``:`` + hash, rounded up.
MAX_HEAD_LEN: Final = 128
_HEX: Final = frozenset(string.hexdigits.lower()) - frozenset("ABCDEF")
_EXPECTED: Final = "'1:<32 hex instance id>:<seq>:<64 hex chain hash>' (docs/spec/witness.md)"


@dataclass(frozen=True, slots=True)
class WitnessHead:
    """A ledger head as a witness carries it: which instance, which seq, which chain hash."""

    instance_id: str
    seq: int
    hash: bytes

    def __post_init__(self) -> None:
        if len(self.instance_id) != INSTANCE_HEX_LEN or not set(self.instance_id) <= _HEX:
            raise FormatError(
                "witness instance id is not 16 bytes of lower-case hex",
                expected=f"{INSTANCE_HEX_LEN} lower-case hex digits",
                found=_show(self.instance_id),
            )
        if isinstance(self.seq, bool) or not 0 <= self.seq <= MAX_SEQ:
            raise FormatError(
                "witness seq is out of range",
                expected=f"an integer from 0 to {MAX_SEQ}",
                found=repr(self.seq),
            )
        if len(self.hash) != HASH_HEX_LEN // 2:
            raise FormatError(
                "witness chain hash is not 32 bytes",
                expected="a 32-byte SHA-256 chain hash",
                found=f"{len(self.hash)} bytes",
            )

    def to_header(self) -> str:
        return f"{VERSION}:{self.instance_id}:{self.seq}:{self.hash.hex()}"


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "...")


def parse_head(value: str) -> WitnessHead:
    """The head a ``Meterbox-Head`` or ``Meterbox-Witness`` header value names."""
    if len(value) > MAX_HEAD_LEN:
        raise FormatError(
            "witness header value is too long",
            expected=f"at most {MAX_HEAD_LEN} characters: {_EXPECTED}",
            found=f"{len(value)} characters",
        )
    parts = value.split(":")
    if len(parts) != 4:
        raise FormatError(
            "witness header value does not have four ':'-separated fields",
            expected=_EXPECTED,
            found=_show(value),
        )
    version, instance, seq_text, hash_text = parts
    if version != VERSION:
        raise UnknownVersionError(
            "unknown witness header version",
            expected=f"version {VERSION}",
            found=_show(version),
            hint="upgrade the server or the client SDK so both speak one witness version",
        )
    if not seq_text or not seq_text.isascii() or not seq_text.isdigit():
        raise FormatError(
            "witness seq is not a decimal number", expected=_EXPECTED, found=_show(seq_text)
        )
    if seq_text != "0" and seq_text.startswith("0"):
        raise FormatError(
            "witness seq has leading zeros",
            expected="a decimal number without leading zeros",
            found=_show(seq_text),
        )
    if len(seq_text) > len(str(MAX_SEQ)):
        raise FormatError(
            "witness seq is out of range",
            expected=f"an integer from 0 to {MAX_SEQ}",
            found=_show(seq_text),
        )
    if len(hash_text) != HASH_HEX_LEN or not set(hash_text) <= _HEX:
        raise FormatError(
            "witness chain hash is not 64 lower-case hex digits",
            expected=_EXPECTED,
            found=_show(hash_text),
        )
    return WitnessHead(instance, int(seq_text), bytes.fromhex(hash_text))


__all__ = [
    "HEAD_HEADER",
    "MAX_HEAD_LEN",
    "WITNESS_HEADER",
    "WitnessHead",
    "parse_head",
]
