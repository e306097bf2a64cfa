"""The ledger directory: file names, the writer lock, the chain key and the metadata.

Files in the ledger directory:

- ``ledger.mbl``  file header, then frames (docs/spec/ledger.md)
- ``chain.key``   the key state: two slots, one current, rewritten in place per batch
  (0600; :mod:`meterbox.ledger._keystate`)
- ``instance.key`` the instance's Ed25519 signing key for reports (0600)
- ``ledger.meta`` instance id, vendor key id and vendor ledger public key
- ``ledger.lock`` held with flock by the one writer process

Invariant: every small file here but ``chain.key`` is replaced atomically
(``meterbox._fs.atomic_write``), so a crash leaves the old or the new content, never a
mix (``chain.key`` keeps that promise with two checksummed slots). A damaged or missing
file is a :class:`~meterbox.errors.StateError` that names the file and how to restore it.
"""

from __future__ import annotations

import fcntl
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import msgpack

from meterbox._fs import atomic_write
from meterbox.crypto import KEY_LEN
from meterbox.errors import StateError
from meterbox.ledger._format import INSTANCE_ID_LEN

LEDGER_FILE: Final = "ledger.mbl"
CHAIN_KEY_FILE: Final = "chain.key"
INSTANCE_KEY_FILE: Final = "instance.key"
META_FILE: Final = "ledger.meta"
LOCK_FILE: Final = "ledger.lock"
#: The copy compaction writes before renaming it over LEDGER_FILE; one left by a crash
#: is removed when the ledger opens.
COMPACT_FILE: Final = "ledger.mbl.compact"
META_VERSION: Final = 1
VENDOR_KEY_ID_LEN: Final = 8


@dataclass(frozen=True, slots=True)
class Meta:
    """``ledger.meta``: who this ledger belongs to and whom it is sealed to."""

    instance_id: bytes
    vendor_key_id: bytes
    vendor_ledger_key: bytes

    def write(self, directory: Path) -> None:
        # Key order is part of the file's bytes; keep it as first written.
        meta = {
            "v": META_VERSION,
            "instance_id": self.instance_id,
            "vendor_key_id": self.vendor_key_id,
            "vendor_ledger_key": self.vendor_ledger_key,
        }
        atomic_write(directory / META_FILE, msgpack.packb(meta, use_bin_type=True))

    @classmethod
    def read(cls, directory: Path) -> Meta:
        meta = _load_map(directory / META_FILE, "metadata", "run 'meterbox server init' first")
        return cls(
            _field(meta, "instance_id", bytes, INSTANCE_ID_LEN, "metadata"),
            _field(meta, "vendor_key_id", bytes, VENDOR_KEY_ID_LEN, "metadata"),
            _field(meta, "vendor_ledger_key", bytes, KEY_LEN, "metadata"),
        )


def lock(directory: Path) -> IO[bytes]:
    """Take the one-writer lock of ``directory``; the caller holds the file open."""
    f = open(directory / LOCK_FILE, "ab")  # noqa: SIM115 - held for the writer's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise StateError(
            f"the ledger in {directory} is in use by another process",
            expected="one server per data directory",
            found="a lock held on ledger.lock",
            hint="stop the other server first",
        ) from None
    return f


def _load_map(path: Path, what: str, missing_hint: str) -> dict[str, Any]:
    try:
        data = msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=True)
    except FileNotFoundError:
        raise StateError(
            f"the ledger's {what} is missing",
            expected=str(path),
            found="no such file",
            hint=missing_hint,
        ) from None
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        data = None
    if not isinstance(data, dict):
        raise StateError(
            f"the ledger's {what} is damaged",
            expected=f"a msgpack map in {path}",
            found="bytes that do not decode to one",
            hint="restore the file from the same backup as the ledger",
        )
    return data


def _field(data: dict[str, Any], key: str, kind: type, length: int | None, what: str) -> Any:
    value = data.get(key)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and length is not None and isinstance(value, bytes):
        ok = len(value) == length
    if ok and isinstance(value, int):
        ok = 0 <= value < 2**32
    if not ok:
        raise StateError(
            f"the ledger's {what} is damaged",
            expected=f"field {key!r} as {kind.__name__}"
            + (f" of {length} bytes" if length else ""),
            found=f"{type(value).__name__}",
            hint="restore the file from the same backup as the ledger",
        )
    return value
