"""Crash images: what a power loss or a full disk can leave of a code path's files.

``kill -9`` keeps the page cache, so a SIGKILL test only ever sees files as if every
write had reached the disk. A power loss keeps only what was made durable, and the
file system is free to persist the rest partly, out of order or not at all. This
module records what a Python code path does to the files under one directory and
then builds the disk images a power loss at any moment could have left (the method
of ALICE, OSDI 2014, and CrashMonkey, OSDI 2018, cut down to what meterbox does).

Recording (:class:`Recorder`, a context manager) interposes on ``os.open``,
``os.write``, ``os.pwrite``, ``os.fsync``, ``os.fdatasync``, ``os.ftruncate``,
``os.replace``, ``os.rename``, ``os.unlink``, ``os.remove``, ``os.mkdir``,
``os.rmdir``, ``os.close``, ``os.dup`` and ``os.fdopen``, and on ``open``/``io.open``
in write modes, for paths under the recorded root only. The real operation always
runs (the code under test sees a real file system); the log gets one entry per
operation that succeeded, with the bytes a short write really wrote. An optional
fault hook turns any write or sync into a short write or an ``OSError`` (ENOSPC),
which is how a full disk looks from inside the process.

SQLite is C code and writes around these hooks. For SQLite files the model is
SQLite's own guarantee: a commit under ``synchronous=FULL`` (or a rollback journal
under ``NORMAL``) is durable when it returns; a WAL commit under ``NORMAL`` only once
the log is checkpointed, which the model takes to be when the connection closes.
``sqlite3.connect`` (and ``sqlite3.dbapi2.connect``, which SQLAlchemy calls) is
wrapped so that every time a connection under the root leaves a transaction, a
serialized copy of the database is logged, with the database file and its
-wal/-journal byte for byte as they are on disk at that moment. Images hold the
last durable copy, each later non-durable one, the raw files (SQLite must recover
them), and the raw database file without its side files.

Test code marks what it was told was durable with :meth:`Recorder.note` (for
example the sequence number of an acknowledged record). A note logged after the
acknowledgement returned is a promise the image at every later cut must keep.

Replay (:func:`crash_images`) walks the log. At every cut (after each operation) it
knows, per file, the content as of its last ``fsync``/``fdatasync`` plus the writes
and truncations since; per directory, the entries as of its last directory fsync
plus the creates, renames and unlinks since. It then builds these images:

- ``full``: every operation persisted (what ``kill -9`` leaves);
- ``synced``: only what was synced (unsynced writes dropped, unsynced directory
  operations undone, on every file and directory at once);
- per file with unsynced operations, others full, and again with others synced:
  each prefix of its unsynced operations, the next write torn (first half only)
  or zero-filled (size persisted before data), and each single earlier write
  dropped while later ones persist (reordering within the file);
- per directory with unsynced operations: each prefix of them, with contents full
  and with contents synced, and each one lost while the later ones persist;
- per SQLite database: see above.

Writes are cut at 512-byte sector boundaries of the file (``SECTOR``) as well as in
half: some sectors new and others old, one sector missing, only the last one, the
size persisted before the data (zeros), the length persisted with no new data.

Identical images are checked once; :class:`HarnessReport` counts them. The model
is deliberately stricter than ext4 in ``data=ordered`` mode (which would persist a
new file's directory entry with its first ``fsync``): code that is safe here is safe
on any POSIX file system that honours ``fsync``.

Sanity mode: ``Recorder(root, broken_sync={"fdatasync"})`` logs ``fdatasync`` as a
call that persists nothing; ``broken_sync={"sqlite"}`` makes no SQLite commit
durable; ``broken_sync_files={"chain.key"}`` breaks every sync of the files of that
name only (the ledger's key state, rewritten in place per batch). A harness that
still finds no loss then is not looking; tests prove that it finds them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import importlib
import io
import itertools
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_REAL: dict[str, Any] = {
    name: getattr(os, name)
    for name in (
        "open",
        "write",
        "pwrite",
        "fsync",
        "fdatasync",
        "ftruncate",
        "replace",
        "rename",
        "unlink",
        "remove",
        "mkdir",
        "rmdir",
        "close",
        "dup",
        "fdopen",
    )
}
_REAL_OPEN = builtins.open
_REAL_IO_OPEN = io.open
_REAL_CONNECT: Callable[..., sqlite3.Connection] = sqlite3.connect

ROOT_INO = 0


@dataclass(frozen=True, slots=True)
class Op:
    """One logged operation. ``ino`` is the model's inode number, ``name`` an entry name.

    kinds: ``write`` (ino, offset, data), ``truncate`` (ino, size), ``sync`` (ino; a
    file or directory fsync/fdatasync), ``nosync`` (a sync the sanity mode ignores),
    ``link`` (dir, name, ino: a new file or directory), ``rename`` (dir, name ->
    new_name), ``unlink`` (dir, name), ``sqlite`` (dir, name, data, raw, durable),
    ``sqlclose`` (dir, name: a connection closed, which checkpoints), ``note`` (value).
    """

    kind: str
    ino: int = -1
    dir: int = -1
    name: str = ""
    new_name: str = ""
    offset: int = 0
    size: int = 0
    data: bytes = b""
    value: Any = None
    is_dir: bool = False
    #: for ``sqlite``: the database file and its -wal/-journal as they were on disk
    #: when the transaction committed, as (suffix, bytes) pairs
    raw: tuple[tuple[str, bytes], ...] = ()
    #: for ``sqlite``: whether the commit was durable when it returned
    #: (``synchronous=FULL``); a WAL commit under ``NORMAL`` is not until a checkpoint
    durable: bool = True


@dataclass(frozen=True, slots=True)
class Fault:
    """What the fault hook makes of one operation: write only ``short`` bytes, then
    (or instead) raise ``error``."""

    short: int | None = None
    error: int | None = errno.ENOSPC


#: fault hook: (kind "write"/"sync"/"create", path relative to the root, count of
#: earlier calls of that kind) -> a Fault or None.
FaultHook = Callable[[str, str, int], Fault | None]


class _RecordingConnection(sqlite3.Connection):
    """A sqlite3 connection that logs a committed copy of its database after each
    statement that leaves it outside a transaction (see the module docstring)."""

    recorder: Recorder | None = None
    rec_path: str = ""

    def _after(self) -> None:
        rec = self.recorder
        if rec is not None and not self.in_transaction:
            # Read the settings through the base class: they must not log a commit.
            base = sqlite3.Connection
            mode = str(base.execute(self, "PRAGMA journal_mode").fetchone()[0]).lower()
            sync = int(base.execute(self, "PRAGMA synchronous").fetchone()[0])
            durable = sync >= 2 or (mode != "wal" and sync >= 1)
            rec._sqlite_commit(self.rec_path, self.serialize(), durable=durable)

    def close(self) -> None:
        rec = self.recorder
        super().close()
        if rec is not None:
            rec._sqlite_close(self.rec_path)

    def execute(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cur = super().execute(*args, **kwargs)
        self._after()
        return cur

    def executemany(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cur = super().executemany(*args, **kwargs)
        self._after()
        return cur

    def executescript(self, *args: Any, **kwargs: Any) -> sqlite3.Cursor:
        cur = super().executescript(*args, **kwargs)
        self._after()
        return cur

    def commit(self) -> None:
        super().commit()
        self._after()

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("factory", _RecordingCursor)
        return super().cursor(*args, **kwargs)


class _RecordingCursor(sqlite3.Cursor):
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        out = super().execute(*args, **kwargs)
        conn = self.connection
        if isinstance(conn, _RecordingConnection):
            conn._after()
        return out

    def executemany(self, *args: Any, **kwargs: Any) -> Any:
        out = super().executemany(*args, **kwargs)
        conn = self.connection
        if isinstance(conn, _RecordingConnection):
            conn._after()
        return out


class _RecordingRaw(io.RawIOBase):
    """A raw file over a recorded descriptor, so buffered Python file objects write
    through the recorded ``os.write``."""

    def __init__(self, fd: int, mode: str, closefd: bool = True) -> None:
        super().__init__()
        self._fd = fd
        self._mode = mode
        self._closefd = closefd

    def fileno(self) -> int:
        return self._fd

    def readable(self) -> bool:
        return "r" in self._mode or "+" in self._mode

    def writable(self) -> bool:
        return any(c in self._mode for c in "wax+")

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        return os.lseek(self._fd, pos, whence)

    def readinto(self, b: Any) -> int:
        data = os.read(self._fd, len(b))
        b[: len(data)] = data
        return len(data)

    def write(self, b: Any) -> int:
        return int(os.write(self._fd, bytes(b)))

    def close(self) -> None:
        if not self.closed and self._closefd:
            os.close(self._fd)
        super().close()


class Recorder:
    """Record file operations under ``root`` while the ``with`` block runs."""

    def __init__(
        self,
        root: Path,
        *,
        broken_sync: frozenset[str] | set[str] = frozenset(),
        broken_sync_files: frozenset[str] | set[str] = frozenset(),
        faults: FaultHook | None = None,
    ) -> None:
        self.root = Path(os.path.realpath(root))
        self.broken_sync = frozenset(broken_sync)
        #: Names of files (relative paths, or their last component) whose syncs persist
        #: nothing: the sanity mode for one file's writes, such as the key state's.
        self.broken_sync_files = frozenset(broken_sync_files)
        self.faults = faults
        self.ops: list[Op] = []
        self.initial: dict[int, bytes] = {}
        self.initial_entries: dict[int, dict[str, int]] = {}
        self._entries: dict[int, dict[str, int]] = {}
        self._is_dir: set[int] = {ROOT_INO}
        self._fds: dict[int, int] = {}
        self._next_ino = 1
        self._counts: dict[str, int] = {}
        self._lock = threading.RLock()
        self._saved: dict[tuple[Any, str], Any] = {}
        self._sqlite_last: dict[tuple[int, str], bytes] = {}

    # ------------------------------------------------------------ public API
    def note(self, value: Any) -> None:
        """Log a promise (an acknowledgement) that later images must keep."""
        with self._lock:
            self.ops.append(Op("note", value=value))

    def __enter__(self) -> Recorder:
        self._snapshot_initial()
        patches: dict[str, Any] = {
            "open": self._open,
            "write": self._write,
            "pwrite": self._pwrite,
            "fsync": self._fsync,
            "fdatasync": self._fdatasync,
            "ftruncate": self._ftruncate,
            "replace": self._replace,
            "rename": self._replace,
            "unlink": self._unlink,
            "remove": self._unlink,
            "mkdir": self._mkdir,
            "rmdir": self._rmdir,
            "close": self._close,
            "dup": self._dup,
            "fdopen": self._fdopen,
        }
        for name, fn in patches.items():
            self._saved[(os, name)] = getattr(os, name)
            setattr(os, name, fn)
        for mod in (builtins, io):
            self._saved[(mod, "open")] = mod.open
            setattr(mod, "open", self._py_open)  # noqa: B010 - the patch is the point
        # SQLAlchemy calls the connect of ``sqlite3.dbapi2``, a module of its own.
        for mod in (sqlite3, importlib.import_module("sqlite3.dbapi2")):
            self._saved[(mod, "connect")] = mod.connect
            setattr(mod, "connect", self._connect)  # noqa: B010 - the patch is the point
        return self

    def __exit__(self, *exc: object) -> None:
        for (mod, name), fn in self._saved.items():
            setattr(mod, name, fn)
        self._saved.clear()

    # ------------------------------------------------------------ live model
    def _snapshot_initial(self) -> None:
        self._entries[ROOT_INO] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = self._rel(dirpath)
            assert rel is not None
            parent = self._lookup(rel)
            assert parent is not None
            for name in sorted(dirnames):
                ino = self._new_ino(is_dir=True)
                self._entries[parent][name] = ino
            for name in sorted(filenames):
                ino = self._new_ino(is_dir=False)
                self._entries[parent][name] = ino
                with _REAL_OPEN(os.path.join(dirpath, name), "rb") as f:
                    self.initial[ino] = f.read()
        self.initial_entries = {d: dict(e) for d, e in self._entries.items()}

    def _new_ino(self, *, is_dir: bool) -> int:
        ino = self._next_ino
        self._next_ino += 1
        if is_dir:
            self._is_dir.add(ino)
            self._entries[ino] = {}
        return ino

    def _rel(self, path: Any, dir_fd: int | None = None) -> str | None:
        """``path`` relative to the root, or None when it lies outside."""
        if isinstance(path, int):
            return None
        p = os.fsdecode(os.fspath(path))
        if dir_fd is not None and not os.path.isabs(p):
            base = self._fd_path(dir_fd)
            if base is None:
                return None
            p = os.path.join(str(self.root), base, p) if base else os.path.join(str(self.root), p)
        full = os.path.abspath(p)
        root = str(self.root)
        if full == root:
            return ""
        if full.startswith(root + os.sep):
            return full[len(root) + 1 :]
        return None

    def _fd_path(self, fd: int) -> str | None:
        ino = self._fds.get(fd)
        return None if ino is None else self._path_of(ino)

    def _path_of(self, ino: int) -> str | None:
        if ino == ROOT_INO:
            return ""
        for d, entries in self._entries.items():
            for name, child in entries.items():
                if child == ino:
                    parent = self._path_of(d)
                    return (
                        None if parent is None else os.path.join(parent, name) if parent else name
                    )
        return None

    def _split(self, rel: str) -> tuple[int | None, str]:
        parent, _, name = rel.rpartition(os.sep)
        return self._lookup(parent), name

    def _lookup(self, rel: str) -> int | None:
        ino = ROOT_INO
        if rel in ("", "."):
            return ino
        for part in rel.split(os.sep):
            if part in ("", "."):
                continue
            entries = self._entries.get(ino)
            if entries is None or part not in entries:
                return None
            ino = entries[part]
        return ino

    def _adopt(self, rel: str) -> int | None:
        """An inode for a file under the root that some other code (SQLite) created."""
        ino = self._lookup(rel)
        if ino is not None:
            return ino
        parent, name = self._split(rel)
        full = self.root / rel
        if parent is None or not full.exists():
            return None
        is_dir = full.is_dir()
        ino = self._new_ino(is_dir=is_dir)
        self._entries[parent][name] = ino
        data = b"" if is_dir else full.read_bytes()
        self.ops.append(Op("link", ino=ino, dir=parent, name=name, is_dir=is_dir))
        if data:
            self.ops.append(Op("write", ino=ino, offset=0, data=data))
        self.ops.append(Op("sync", ino=ino))
        self.ops.append(Op("sync", ino=parent))
        return ino

    def _fault(self, kind: str, rel: str) -> Fault | None:
        if self.faults is None:
            return None
        n = self._counts.get(kind, 0)
        self._counts[kind] = n + 1
        return self.faults(kind, rel, n)

    # ------------------------------------------------------------ interposers
    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        rel = self._rel(path, dir_fd)
        if rel is None:
            return int(_REAL["open"](path, flags, mode, dir_fd=dir_fd))
        with self._lock:
            existed = self._lookup(rel)
            if existed is None and (flags & os.O_CREAT):
                fault = self._fault("create", rel)
                if fault is not None and fault.error is not None:
                    raise OSError(fault.error, os.strerror(fault.error), str(path))
            fd = int(_REAL["open"](path, flags, mode, dir_fd=dir_fd))
            ino = existed
            if ino is None:
                if flags & os.O_CREAT:
                    parent, name = self._split(rel)
                    assert parent is not None, rel
                    ino = self._new_ino(is_dir=False)
                    self._entries[parent][name] = ino
                    self.ops.append(Op("link", ino=ino, dir=parent, name=name))
                else:
                    ino = self._adopt(rel)
            elif flags & os.O_TRUNC:
                self.ops.append(Op("truncate", ino=ino, size=0))
            if ino is not None:
                self._fds[fd] = ino
            return fd

    def _do_write(self, fd: int, data: Any, offset: int | None) -> int:
        ino = self._fds.get(fd)
        if ino is None:
            if offset is None:
                return int(_REAL["write"](fd, data))
            return int(_REAL["pwrite"](fd, data, offset))
        with self._lock:
            buf = bytes(data)
            fault = self._fault("write", self._path_of(ino) or "?")
            if fault is not None and fault.short is None and fault.error is not None:
                raise OSError(fault.error, os.strerror(fault.error))
            if fault is not None and fault.short is not None:
                buf = buf[: fault.short]
            pos = offset
            if pos is None:
                fl = _fcntl_flags(fd)
                pos = os.fstat(fd).st_size if fl & os.O_APPEND else os.lseek(fd, 0, os.SEEK_CUR)
            n = 0
            if buf:
                if offset is None:
                    n = int(_REAL["write"](fd, buf))
                else:
                    n = int(_REAL["pwrite"](fd, buf, offset))
            if n:
                self.ops.append(Op("write", ino=ino, offset=pos, data=buf[:n]))
            if fault is not None and fault.error is not None and n == 0:
                raise OSError(fault.error, os.strerror(fault.error))
            return n

    def _write(self, fd: int, data: Any) -> int:
        return self._do_write(fd, data, None)

    def _pwrite(self, fd: int, data: Any, offset: int) -> int:
        return self._do_write(fd, data, offset)

    def _sync(self, fd: int, real: str) -> None:
        ino = self._fds.get(fd)
        if ino is None:
            _REAL[real](fd)
            return
        with self._lock:
            fault = self._fault("sync", self._path_of(ino) or "?")
            if fault is not None and fault.error is not None:
                raise OSError(fault.error, os.strerror(fault.error))
            _REAL[real](fd)
            path = self._path_of(ino) or ""
            broken = ino not in self._is_dir and (
                real in self.broken_sync
                or path in self.broken_sync_files
                or os.path.basename(path) in self.broken_sync_files
            )
            self.ops.append(Op("nosync" if broken else "sync", ino=ino))

    def _fsync(self, fd: int) -> None:
        self._sync(fd, "fsync")

    def _fdatasync(self, fd: int) -> None:
        self._sync(fd, "fdatasync")

    def _ftruncate(self, fd: int, size: int) -> None:
        _REAL["ftruncate"](fd, size)
        ino = self._fds.get(fd)
        if ino is not None:
            with self._lock:
                self.ops.append(Op("truncate", ino=ino, size=size))

    def _replace(
        self,
        src: Any,
        dst: Any,
        *,
        src_dir_fd: int | None = None,
        dst_dir_fd: int | None = None,
    ) -> None:
        rs, rd = self._rel(src, src_dir_fd), self._rel(dst, dst_dir_fd)
        if rs is None and rd is None:
            _REAL["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        with self._lock:
            _REAL["replace"](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            assert rs is not None and rd is not None, "rename across the recorded root"
            ps, ns = self._split(rs)
            pd, nd = self._split(rd)
            assert ps is not None and ps == pd, "the model renames within one directory only"
            if ns not in self._entries[ps]:
                self._adopt(rs)
            self._entries[ps][nd] = self._entries[ps].pop(ns)
            self.ops.append(Op("rename", dir=ps, name=ns, new_name=nd))

    def _unlink(self, path: Any, *, dir_fd: int | None = None) -> None:
        rel = self._rel(path, dir_fd)
        _REAL["unlink"](path, dir_fd=dir_fd)
        if rel is None:
            return
        with self._lock:
            parent, name = self._split(rel)
            if parent is not None and name in self._entries[parent]:
                del self._entries[parent][name]
                self.ops.append(Op("unlink", dir=parent, name=name))

    def _rmdir(self, path: Any, *, dir_fd: int | None = None) -> None:
        rel = self._rel(path, dir_fd)
        _REAL["rmdir"](path, dir_fd=dir_fd)
        if rel is None:
            return
        with self._lock:
            parent, name = self._split(rel)
            if parent is not None and name in self._entries[parent]:
                del self._entries[parent][name]
                self.ops.append(Op("unlink", dir=parent, name=name))

    def _mkdir(self, path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        rel = self._rel(path, dir_fd)
        if rel is None:
            _REAL["mkdir"](path, mode, dir_fd=dir_fd)
            return
        with self._lock:
            fault = self._fault("create", rel)
            if fault is not None and fault.error is not None:
                raise OSError(fault.error, os.strerror(fault.error), str(path))
            _REAL["mkdir"](path, mode, dir_fd=dir_fd)
            parent, name = self._split(rel)
            assert parent is not None, rel
            ino = self._new_ino(is_dir=True)
            self._entries[parent][name] = ino
            self.ops.append(Op("link", ino=ino, dir=parent, name=name, is_dir=True))

    def _close(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)
        _REAL["close"](fd)

    def _dup(self, fd: int) -> int:
        new = int(_REAL["dup"](fd))
        with self._lock:
            if fd in self._fds:
                self._fds[new] = self._fds[fd]
        return new

    def _fdopen(self, fd: int, mode: str = "r", buffering: int = -1, *args: Any, **kw: Any) -> Any:
        if fd in self._fds and any(c in mode for c in "wax+"):
            return self._wrap(fd, mode, buffering, *args, **kw)
        return _REAL["fdopen"](fd, mode, buffering, *args, **kw)

    def _py_open(
        self, file: Any, mode: str = "r", buffering: int = -1, *args: Any, **kw: Any
    ) -> Any:
        if isinstance(file, int):
            if file in self._fds and any(c in mode for c in "wax+"):
                return self._wrap(file, mode, buffering, *args, **kw)
            return _REAL_IO_OPEN(file, mode, buffering, *args, **kw)
        rel = self._rel(file)
        if rel is None or not any(c in mode for c in "wax+"):
            return _REAL_IO_OPEN(file, mode, buffering, *args, **kw)
        flags = os.O_CREAT | (os.O_RDWR if "+" in mode else os.O_WRONLY)
        if "w" in mode:
            flags |= os.O_TRUNC
        if "a" in mode:
            flags |= os.O_APPEND
        if "x" in mode:
            flags |= os.O_EXCL
        if "r" in mode:
            flags &= ~(os.O_CREAT | os.O_TRUNC)
        fd = self._open(file, flags, 0o666)
        return self._wrap(fd, mode, buffering, *args, **kw)

    def _wrap(self, fd: int, mode: str, buffering: int, *args: Any, **kw: Any) -> Any:
        closefd = kw.pop("closefd", True)
        raw = _RecordingRaw(fd, mode, closefd)
        if buffering == 0:
            return raw
        size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
        buffered: Any
        if "+" in mode:
            buffered = io.BufferedRandom(raw, size)
        elif raw.writable():
            buffered = io.BufferedWriter(raw, size)
        else:
            buffered = io.BufferedReader(raw, size)
        if "b" in mode:
            return buffered
        encoding = args[0] if args else kw.pop("encoding", None)
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", **kw)

    def _connect(self, database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        rel = None if database == ":memory:" else self._rel(database)
        if rel is None:
            return _REAL_CONNECT(database, *args, **kwargs)
        kwargs.setdefault("factory", _RecordingConnection)
        conn = _REAL_CONNECT(database, *args, **kwargs)
        if isinstance(conn, _RecordingConnection):
            conn.recorder = self
            conn.rec_path = rel
        return conn

    def _sqlite_commit(self, rel: str, data: bytes, *, durable: bool) -> None:
        with self._lock:
            parent, name = self._split(rel)
            if parent is None:
                return
            key = (parent, name)
            if self._sqlite_last.get(key) == data:
                return
            self._sqlite_last[key] = data
            raw = []
            for suffix in ("", "-wal", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    with _REAL_OPEN(self.root / f"{rel}{suffix}", "rb") as f:
                        raw.append((suffix, f.read()))
            durable = durable and "sqlite" not in self.broken_sync
            self.ops.append(
                Op("sqlite", dir=parent, name=name, data=data, raw=tuple(raw), durable=durable)
            )

    def _sqlite_close(self, rel: str) -> None:
        with self._lock:
            parent, name = self._split(rel)
            if parent is not None and "sqlite" not in self.broken_sync:
                self.ops.append(Op("sqlclose", dir=parent, name=name))


def _fcntl_flags(fd: int) -> int:
    import fcntl

    return int(fcntl.fcntl(fd, fcntl.F_GETFL))


# ---------------------------------------------------------------------- replay
@dataclass
class _State:
    """The model of the disk at one point of the log."""

    content: dict[int, bytes]
    pending: dict[int, list[Op]]
    entries: dict[int, dict[str, int]]
    ns_pending: dict[int, list[Op]]
    is_dir: set[int]
    sqlite: dict[tuple[int, str], bytes]
    #: per database: commits not yet durable (WAL under ``synchronous=NORMAL``)
    sqlite_pending: dict[tuple[int, str], list[Op]]
    #: per database: the raw files of its latest commit
    sqlite_raw: dict[tuple[int, str], tuple[tuple[str, bytes], ...]]
    notes: list[Any]


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """What a checker knows about one image: where the cut is and what was promised."""

    cut: int
    variant: str
    notes: tuple[Any, ...]
    last_op: str


class KnownDefect(Exception):
    """Raised by a checker for an image that shows a defect already understood and
    tracked (the message names it). The harness counts such images apart from
    failures, and prints them, so the defect stays visible until it is fixed."""


@dataclass
class HarnessReport:
    images: int = 0
    cuts: int = 0
    failures: list[tuple[CrashPoint, str]] = field(default_factory=list)
    known: list[tuple[CrashPoint, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.images} distinct crash images over {self.cuts} cuts, "
                 f"{len(self.failures)} failing, {len(self.known)} known defect"]  # fmt: skip
        for point, why in self.failures[:10]:
            lines.append(f"  cut {point.cut} ({point.last_op}) {point.variant}: {why}")
        for point, why in self.known[:3]:
            lines.append(f"  known: cut {point.cut} ({point.last_op}) {point.variant}: {why}")
        return "\n".join(lines)


def _apply_content(data: bytes, ops: Sequence[Op]) -> bytes:
    buf = bytearray(data)
    for op in ops:
        if op.kind == "truncate":
            del buf[op.size :]
            if len(buf) < op.size:
                buf.extend(b"\0" * (op.size - len(buf)))
        else:
            end = op.offset + len(op.data)
            if len(buf) < op.offset:
                buf.extend(b"\0" * (op.offset - len(buf)))
            buf[op.offset : end] = op.data
    return bytes(buf)


def _apply_ns(entries: dict[str, int], ops: Sequence[Op]) -> dict[str, int]:
    out = dict(entries)
    for op in ops:
        if op.kind == "link":
            out[op.name] = op.ino
        elif op.kind == "unlink":
            out.pop(op.name, None)
        elif op.kind == "rename" and op.name in out:
            out[op.new_name] = out.pop(op.name)
    return out


#: The unit a disk persists atomically (a sector). A power loss in the middle of a
#: write leaves some of its sectors new and others old (or zero, past the old end).
SECTOR = 512
#: How many sector-granular cut points to try inside one write; a batch of a few
#: hundred KiB would otherwise give thousands of near-identical images.
MAX_SECTOR_CUTS = 8


def _pieces(op: Op) -> list[tuple[int, int]]:
    """``op``'s data split at absolute sector boundaries: (start, end) within the data."""
    bounds = [0]
    first = (op.offset // SECTOR + 1) * SECTOR - op.offset
    bounds.extend(range(first, len(op.data), SECTOR))
    bounds.append(len(op.data))
    return list(itertools.pairwise(bounds))


def _spread(n: int, most: int) -> list[int]:
    """Up to ``most`` indices out of ``range(n)``, evenly spread, first and last included."""
    if n <= most:
        return list(range(n))
    return sorted({round(i * (n - 1) / (most - 1)) for i in range(most)})


def _durable_prefix(base: bytes, ops: Sequence[Op]) -> bytes:
    """What is left of ``base`` when every truncation persisted and no data did."""
    keep = min([len(base), *(op.size for op in ops if op.kind == "truncate")])
    return base[:keep]


def _content_variants(base: bytes, ops: list[Op]) -> Iterator[tuple[str, bytes]]:
    """Every state of one file's unsynced operations a power loss can leave.

    ``base`` is the content as of the last sync and ``ops`` the writes and
    truncations since. Besides each prefix of ``ops``, the next write can be cut
    anywhere: in half (a byte-granular tear, stricter than any disk), at sector
    boundaries, with one sector missing, or with only its last sector (the disk
    reorders sectors). Its size can persist before its data (zeros instead of the
    bytes, in whole or in its last sector), one earlier write can be lost while
    later ones persist, only the last write can persist, and the file's length can
    persist with none of its new data.
    """
    n = len(ops)
    yield "none", base
    for j in range(1, n + 1):
        yield f"prefix{j}", _apply_content(base, ops[:j])
    for j, op in enumerate(ops):
        if op.kind != "write" or not op.data:
            continue
        before = ops[:j]
        half = Op("write", ino=op.ino, offset=op.offset, data=op.data[: len(op.data) // 2])
        yield f"torn{j}", _apply_content(base, [*before, half])
        zero = Op("write", ino=op.ino, offset=op.offset, data=b"\0" * len(op.data))
        yield f"zeroed{j}", _apply_content(base, [*before, zero])
        if j < n - 1:
            yield f"drop{j}", _apply_content(base, [*ops[:j], *ops[j + 1 :]])
        pieces = _pieces(op)
        if len(pieces) < 2:
            continue

        def part(lo: int, hi: int, op: Op = op) -> Op:
            return Op("write", ino=op.ino, offset=op.offset + lo, data=op.data[lo:hi])

        for k in _spread(len(pieces) - 1, MAX_SECTOR_CUTS):
            # The first k+1 sectors reached the disk, the rest did not.
            yield f"sectors{j}.{k + 1}", _apply_content(base, [*before, part(0, pieces[k][1])])
        for k in _spread(len(pieces), MAX_SECTOR_CUTS):
            # Every sector but one reached the disk; that one kept its old bytes.
            rest = [part(lo, hi) for i, (lo, hi) in enumerate(pieces) if i != k]
            yield f"hole{j}.{k}", _apply_content(base, [*before, *rest])
        last_lo, last_hi = pieces[-1]
        yield f"lastsector{j}", _apply_content(base, [*before, part(last_lo, last_hi)])
        zero_last = Op("write", ino=op.ino, offset=op.offset + last_lo,
                       data=b"\0" * (last_hi - last_lo))  # fmt: skip
        yield f"zerotail{j}", _apply_content(base, [*before, op, zero_last])
    writes = [i for i, op in enumerate(ops) if op.kind == "write"]
    if len(writes) > 1:
        only_last = [op for i, op in enumerate(ops) if op.kind == "truncate" or i == writes[-1]]
        yield "lastonly", _apply_content(base, only_last)
    if writes:
        # The file's new length reached the disk, none of the new bytes did.
        full = _apply_content(base, ops)
        kept = _durable_prefix(base, ops)
        yield "sizeonly", kept + b"\0" * max(0, len(full) - len(kept))


#: How a database appears in an image: ("logical", a committed copy) with no side
#: files; ("raw", the files as on disk at a commit, -wal/-journal included); or
#: ("main", the database file of that moment alone, its side files lost).
SqliteView = tuple[str, Any]

_SIDE_FILES = ("-wal", "-shm", "-journal")


class _Image:
    """A candidate image: per-directory entries, per-inode contents, SQLite views."""

    def __init__(
        self,
        state: _State,
        entries: dict[int, dict[str, int]],
        content: dict[int, bytes],
        sqlite: dict[tuple[int, str], SqliteView] | None = None,
    ):
        self.state = state
        self.entries = entries
        self.content = content
        self.sqlite = _sqlite_full(state) if sqlite is None else sqlite

    def files(self) -> dict[str, bytes | None]:
        """path -> content (None for directories), reachable from the root."""
        out: dict[str, bytes | None] = {}
        seen: set[int] = set()

        def walk(ino: int, prefix: str) -> None:
            if ino in seen:
                return
            seen.add(ino)
            names = self.entries.get(ino, {})
            for name in sorted(names):
                child = names[name]
                path = f"{prefix}{name}"
                if child in self.state.is_dir:
                    out[path] = None
                    walk(child, path + "/")
                else:
                    out[path] = self.content.get(child, b"")
            for (d, name), (how, data) in self.sqlite.items():
                if d != ino:
                    continue
                path = f"{prefix}{name}"
                for suffix in _SIDE_FILES:
                    out.pop(f"{path}{suffix}", None)
                if how == "raw":
                    for suffix, raw in data:
                        out[f"{path}{suffix}"] = raw
                else:
                    out[path] = data

        walk(ROOT_INO, "")
        return out


def _digest(files: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        h.update(path.encode() + b"\0")
        h.update(b"D" if data is None else b"F" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _sqlite_full(state: _State) -> dict[tuple[int, str], SqliteView]:
    """Every database at its latest commit, durable or not (what ``kill -9`` leaves)."""
    out: dict[tuple[int, str], SqliteView] = {k: ("logical", v) for k, v in state.sqlite.items()}
    for key, pending in state.sqlite_pending.items():
        if pending:
            out[key] = ("logical", pending[-1].data)
    return out


#: At most this many lost-commit images per database and cut.
MAX_LOST_COMMITS = 8


def _sqlite_variants(state: _State) -> Iterator[tuple[str, dict[tuple[int, str], SqliteView]]]:
    """The states of the SQLite files a power loss can leave, beyond the latest commit.

    - ``lost{n}``: the last ``n`` commits that were not yet durable (a WAL under
      ``synchronous=NORMAL``, before its checkpoint) are gone;
    - ``raw``: the database and its -wal/-journal byte for byte as they were on disk
      at the latest commit; SQLite must recover them to that commit;
    - ``main-only``: the database file of that moment without its -wal/-journal, as
      if the side file were lost or deleted (not a power-loss state for a durable
      commit: checkers treat it as the customer deleting a file).
    """
    full = _sqlite_full(state)
    for key, pending in state.sqlite_pending.items():
        durable = state.sqlite.get(key)
        for n in _spread(len(pending), MAX_LOST_COMMITS):
            lost = len(pending) - n
            keep = pending[n - 1].data if n else durable
            if keep is None:
                continue
            yield f"sqlite:{key[1]}:lost{lost}", {**full, key: ("logical", keep)}
    for key, raw in state.sqlite_raw.items():
        if not raw:
            continue
        yield f"sqlite:{key[1]}:raw", {**full, key: ("raw", raw)}
        main = dict(raw).get("")
        if main is not None and len(raw) > 1:
            yield f"sqlite:{key[1]}:main-only", {**full, key: ("main", main)}


def _variants(state: _State) -> Iterator[tuple[str, _Image]]:
    full_content = {i: _apply_content(state.content.get(i, b""), state.pending.get(i, []))
                    for i in set(state.content) | set(state.pending)}  # fmt: skip
    synced_content = dict(state.content)
    full_ns = {d: _apply_ns(e, state.ns_pending.get(d, [])) for d, e in state.entries.items()}
    for d in state.ns_pending:
        full_ns.setdefault(d, _apply_ns({}, state.ns_pending[d]))
    synced_ns = {d: dict(e) for d, e in state.entries.items()}
    yield "full", _Image(state, full_ns, full_content)
    synced_sqlite: dict[tuple[int, str], SqliteView] = {
        k: ("logical", v) for k, v in state.sqlite.items()
    }
    yield "synced", _Image(state, synced_ns, synced_content, synced_sqlite)
    for label, views in _sqlite_variants(state):
        yield label, _Image(state, full_ns, full_content, views)
    for ino, ops in state.pending.items():
        if not ops:
            continue
        base = state.content.get(ino, b"")
        for label, data in _content_variants(base, ops):
            yield f"ino{ino}:{label}", _Image(state, full_ns, {**full_content, ino: data})
            yield f"ino{ino}:{label}+synced", _Image(state, full_ns, {**synced_content, ino: data})
    for d, ops in state.ns_pending.items():
        for j in range(len(ops)):
            entries = _apply_ns(state.entries.get(d, {}), ops[:j])
            ns = {**full_ns, d: entries}
            yield f"dir{d}:prefix{j}", _Image(state, ns, full_content)
            yield f"dir{d}:prefix{j}+synced", _Image(state, ns, synced_content)
            # A directory operation and an unsynced file persisted independently:
            # the entry may be there while the file's last write is torn or absent.
            for ino, pending in state.pending.items():
                if not pending:
                    continue
                before_last = _apply_content(state.content.get(ino, b""), pending[:-1])
                for label, data in _content_variants(before_last, pending[-1:]):
                    content = {**full_content, ino: data}
                    yield f"dir{d}:prefix{j}+ino{ino}:last-{label}", _Image(state, ns, content)
        # POSIX does not order directory operations that no directory fsync
        # separates: a later one may persist while an earlier one is lost.
        for j in range(len(ops) - 1):
            entries = _apply_ns(state.entries.get(d, {}), [*ops[:j], *ops[j + 1 :]])
            ns = {**full_ns, d: entries}
            yield f"dir{d}:drop{j}", _Image(state, ns, full_content)
            yield f"dir{d}:drop{j}+synced", _Image(state, ns, synced_content)


def _states(rec: Recorder) -> Iterator[tuple[int, Op | None, _State]]:
    state = _State(
        content=dict(rec.initial),
        pending={},
        entries={d: dict(e) for d, e in rec.initial_entries.items()},
        ns_pending={},
        is_dir=set(rec._is_dir),
        sqlite={},
        sqlite_pending={},
        sqlite_raw={},
        notes=[],
    )
    yield 0, None, state
    for i, op in enumerate(rec.ops, 1):
        if op.kind in ("write", "truncate"):
            state.pending.setdefault(op.ino, []).append(op)
        elif op.kind == "sync":
            if op.ino in state.is_dir:
                state.entries[op.ino] = _apply_ns(
                    state.entries.get(op.ino, {}), state.ns_pending.pop(op.ino, [])
                )
            else:
                state.content[op.ino] = _apply_content(
                    state.content.get(op.ino, b""), state.pending.pop(op.ino, [])
                )
        elif op.kind in ("link", "rename", "unlink"):
            state.ns_pending.setdefault(op.dir, []).append(op)
            if op.kind == "link" and op.is_dir:
                state.entries.setdefault(op.ino, {})
        elif op.kind == "sqlite":
            key = (op.dir, op.name)
            state.sqlite_raw[key] = op.raw
            if op.durable:
                state.sqlite[key] = op.data
                state.sqlite_pending.pop(key, None)
            else:
                state.sqlite_pending.setdefault(key, []).append(op)
        elif op.kind == "sqlclose":
            # Closing the last connection checkpoints the log and syncs the file.
            key = (op.dir, op.name)
            pending = state.sqlite_pending.pop(key, [])
            if pending:
                state.sqlite[key] = pending[-1].data
        elif op.kind == "note":
            state.notes.append(op.value)
        yield i, op, state


def materialize(files: dict[str, bytes | None], target: Path) -> None:
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path in sorted(files):
        data = files[path]
        full = target / path
        if data is None:
            full.mkdir(mode=0o700, exist_ok=True)
        else:
            full.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _REAL_OPEN(full, "wb") as f:
                f.write(data)
            full.chmod(0o600)


Checker = Callable[[Path, CrashPoint], None]


def crash_images(
    rec: Recorder,
    check: Checker,
    *,
    workdir: Path | None = None,
    cuts: str = "all",
    limit: int | None = None,
) -> HarnessReport:
    """Build every crash image of ``rec``'s log and run ``check`` on each distinct one.

    ``cuts="all"`` cuts after every operation, ``"sync"`` only after syncs and
    notes (the variants still cover the states in between). ``check`` gets a fresh
    copy of the image (under ``root``'s name) and raises to report a violation.
    """
    report = HarnessReport()
    seen: set[str] = set()
    base = Path(tempfile.mkdtemp(prefix="crashimg-", dir=workdir))
    try:
        for cut, op, state in _states(rec):
            if cuts == "sync" and op is not None and op.kind not in ("sync", "nosync", "note"):
                continue
            report.cuts += 1
            last = "start" if op is None else f"{op.kind}#{cut}"
            for label, image in _variants(state):
                files = image.files()
                key = _digest(files) + repr(len(state.notes))
                if key in seen:
                    continue
                seen.add(key)
                report.images += 1
                target = base / f"img{report.images}"
                root = target / rec.root.name
                materialize(files, root)
                point = CrashPoint(cut, label, tuple(state.notes), last)
                try:
                    check(root, point)
                except KnownDefect as exc:
                    report.known.append((point, str(exc)[:400]))
                except Exception as exc:
                    report.failures.append((point, f"{type(exc).__name__}: {exc}"[:400]))
                finally:
                    shutil.rmtree(target, ignore_errors=True)
                if limit is not None and report.images >= limit:
                    return report
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return report


@contextlib.contextmanager
def recording(root: Path, **kwargs: Any) -> Iterator[Recorder]:
    with Recorder(root, **kwargs) as rec:
        yield rec
