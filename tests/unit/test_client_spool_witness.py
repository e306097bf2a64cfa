"""The spool keeps the latest ledger head per server, durably, and never lowers it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meterbox.client._spool import Spool
from meterbox.witness import WitnessHead

URL = "http://127.0.0.1:8400"
ME = "00" * 16


def test_the_latest_head_survives_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        assert spool.head_for(URL) is None
        assert spool.keep_head(URL, WitnessHead(ME, 10, b"\x01" * 32), now=1.0)
        assert spool.keep_head(URL, WitnessHead(ME, 12, b"\x02" * 32), now=2.0)
    with Spool(path) as spool:
        assert spool.head_for(URL) == WitnessHead(ME, 12, b"\x02" * 32)
        assert spool.head_for("http://other") is None


def test_a_lower_or_equal_head_of_the_same_instance_never_replaces_it(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        spool.keep_head(URL, WitnessHead(ME, 12, b"\x02" * 32), now=1.0)
        # A server that went back in time answers with lower heads: the client keeps
        # handing back the one the server lost.
        assert not spool.keep_head(URL, WitnessHead(ME, 7, b"\x03" * 32), now=2.0)
        assert not spool.keep_head(URL, WitnessHead(ME, 12, b"\x04" * 32), now=3.0)
        assert spool.head_for(URL) == WitnessHead(ME, 12, b"\x02" * 32)
        # Another instance at that URL (a new server) starts a new line of heads.
        assert spool.keep_head(URL, WitnessHead("11" * 16, 3, b"\x05" * 32), now=4.0)
        assert spool.head_for(URL) == WitnessHead("11" * 16, 3, b"\x05" * 32)


def test_an_edited_row_is_no_witness(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        spool.keep_head(URL, WitnessHead(ME, 12, b"\x02" * 32), now=1.0)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE heads SET hash='zz'")
    with Spool(path) as spool:
        assert spool.head_for(URL) is None


def test_a_spool_from_before_witnesses_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('version', '1')")
    with Spool(path) as spool:
        assert spool.keep_head(URL, WitnessHead(ME, 1, b"\x01" * 32), now=1.0)
