"""Reading a ledger's head without opening it for writing: for queries on a stopped server.

Invariant: nothing here writes, creates or locks a file. The file is opened read-only and
walked by the same recovery scan the writer uses, so the head reported is the one the
writer would resume from (a torn tail, if any, is excluded, not cut).
"""

from __future__ import annotations

import os
from pathlib import Path

from meterbox._fs import check_private_dir
from meterbox.errors import StateError
from meterbox.ledger import _keystate
from meterbox.ledger._directory import CHAIN_KEY_FILE, LEDGER_FILE, Meta
from meterbox.ledger._recovery import scan
from meterbox.ledger._seal import Head


def read_head(directory: Path) -> Head:
    """The last good record's seq and chain hash, read without writing anything."""
    check_private_dir(directory)
    meta = Meta.read(directory)
    key_state = _keystate.read(directory, CHAIN_KEY_FILE)
    try:
        fd = os.open(directory / LEDGER_FILE, os.O_RDONLY)
    except OSError as exc:
        raise StateError(
            "cannot read the ledger",
            expected=f"a readable {directory / LEDGER_FILE}",
            found=exc.strerror or str(exc),
            hint="run the command as the user the server runs as",
        ) from exc
    try:
        found = scan(fd, key_state)
    finally:
        os.close(fd)
    if found.header.instance_id != meta.instance_id:
        raise StateError(
            "ledger file belongs to another instance",
            expected=meta.instance_id.hex(),
            found=found.header.instance_id.hex(),
            hint="restore the matching ledger.mbl or chain.key",
        )
    return Head(found.next_seq - 1, found.head_hash)
