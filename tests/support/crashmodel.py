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
SQLite's own guarantee: the database holds exactly the last committed transaction.
``sqlite3.connect`` is wrapped so that every time a connection under the root
leaves a transaction, a serialized copy of the database is logged; images hold the
last such copy before the cut (or the file as it was when recording began).

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
  and with contents synced.

Identical images are checked once; :class:`HarnessReport` counts them. The model
is deliberately stricter than ext4 in ``data=ordered`` mode (which would persist a
new file's directory entry with its first ``fsync``): code that is safe here is safe
on any POSIX file system that honours ``fsync``.

Sanity mode: ``Recorder(root, broken_sync={"fdatasync"})`` logs ``fdatasync`` as a
call that persists nothing; ``broken_sync_files={"chain.key"}`` does so for every sync
of the files of that name only (the ledger's key state, rewritten in place per batch).
A harness that still finds no loss then is not looking; a test proves that it finds them.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
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
_REAL_CONNECT = sqlite3.connect

ROOT_INO = 0


@dataclass(frozen=True, slots=True)
class Op:
    """One logged operation. ``ino`` is the model's inode number, ``name`` an entry name.

    kinds: ``write`` (ino, offset, data), ``truncate`` (ino, size), ``sync`` (ino; a
    file or directory fsync/fdatasync), ``nosync`` (a sync the sanity mode ignores),
    ``link`` (dir, name, ino: a new file or directory), ``rename`` (dir, name ->
    new_name), ``unlink`` (dir, name), ``sqlite`` (dir, name, data), ``note`` (value).
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
            rec._sqlite_commit(self.rec_path, self.serialize())

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
        self._saved[(builtins, "open")] = builtins.open
        builtins.open = self._py_open  # type: ignore[assignment]
        self._saved[(io, "open")] = io.open
        io.open = self._py_open  # type: ignore[assignment]
        self._saved[(sqlite3, "connect")] = sqlite3.connect
        sqlite3.connect = self._connect  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        for (mod, name), fn in self._saved.items():
            setattr(mod, name, fn)
        self._saved.clear()

    # ------------------------------------------------------------ live model
    def _snapshot_initial(self) -> None:
        self._entries[ROOT_INO] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            parent = self._lookup(self._rel(dirpath))
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

    def _sqlite_commit(self, rel: str, data: bytes) -> None:
        with self._lock:
            parent, name = self._split(rel)
            if parent is None:
                return
            key = (parent, name)
            if self._sqlite_last.get(key) == data:
                return
            self._sqlite_last[key] = data
            self.ops.append(Op("sqlite", dir=parent, name=name, data=data))


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
    notes: list[Any]


@dataclass(frozen=True, slots=True)
class CrashPoint:
    """What a checker knows about one image: where the cut is and what was promised."""

    cut: int
    variant: str
    notes: tuple[Any, ...]
    last_op: str


@dataclass
class HarnessReport:
    images: int = 0
    cuts: int = 0
    failures: list[tuple[CrashPoint, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.images} distinct crash images over {self.cuts} cuts, "
                 f"{len(self.failures)} failing"]  # fmt: skip
        for point, why in self.failures[:10]:
            lines.append(f"  cut {point.cut} ({point.last_op}) {point.variant}: {why}")
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


def _content_variants(base: bytes, ops: list[Op]) -> Iterator[tuple[str, bytes]]:
    """Every state of one file's unsynced operations a power loss can leave."""
    n = len(ops)
    yield "none", base
    for j in range(1, n + 1):
        yield f"prefix{j}", _apply_content(base, ops[:j])
    for j, op in enumerate(ops):
        if op.kind != "write" or not op.data:
            continue
        half = Op("write", ino=op.ino, offset=op.offset, data=op.data[: len(op.data) // 2])
        yield f"torn{j}", _apply_content(base, [*ops[:j], half])
        zero = Op("write", ino=op.ino, offset=op.offset, data=b"\0" * len(op.data))
        yield f"zeroed{j}", _apply_content(base, [*ops[:j], zero])
        if j < n - 1:
            yield f"drop{j}", _apply_content(base, [*ops[:j], *ops[j + 1 :]])


class _Image:
    """A candidate image: per-directory entries and per-inode contents."""

    def __init__(
        self, state: _State, entries: dict[int, dict[str, int]], content: dict[int, bytes]
    ):
        self.state = state
        self.entries = entries
        self.content = content

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
            for (d, name), data in self.state.sqlite.items():
                if d == ino:
                    out[f"{prefix}{name}"] = data
                    for suffix in ("-wal", "-shm", "-journal"):
                        out.pop(f"{prefix}{name}{suffix}", None)

        walk(ROOT_INO, "")
        return out


def _digest(files: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        data = files[path]
        h.update(path.encode() + b"\0")
        h.update(b"D" if data is None else b"F" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _variants(state: _State) -> Iterator[tuple[str, _Image]]:
    full_content = {i: _apply_content(state.content.get(i, b""), state.pending.get(i, []))
                    for i in set(state.content) | set(state.pending)}  # fmt: skip
    synced_content = dict(state.content)
    full_ns = {d: _apply_ns(e, state.ns_pending.get(d, [])) for d, e in state.entries.items()}
    for d in state.ns_pending:
        full_ns.setdefault(d, _apply_ns({}, state.ns_pending[d]))
    synced_ns = {d: dict(e) for d, e in state.entries.items()}
    yield "full", _Image(state, full_ns, full_content)
    yield "synced", _Image(state, synced_ns, synced_content)
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


def _states(rec: Recorder) -> Iterator[tuple[int, Op | None, _State]]:
    state = _State(
        content=dict(rec.initial),
        pending={},
        entries={d: dict(e) for d, e in rec.initial_entries.items()},
        ns_pending={},
        is_dir=set(rec._is_dir),
        sqlite={},
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
            state.sqlite[(op.dir, op.name)] = op.data
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
