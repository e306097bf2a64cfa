"""LedgerWriter: the durable, group-committing shell around :class:`Sealer`.

The directory's files are described in :mod:`meterbox.ledger._directory`; opening
after a crash (the recovery scan) is :mod:`meterbox.ledger._recovery`. This module
holds the writer itself: creation, appends through the commit thread, epoch rolls,
clock steps, checkpoints and compaction.

Durability: a record is acknowledged (its future resolves) only after the batch
holding it has been written and fdatasync'ed. One committer thread drains every
record queued meanwhile into one write and one sync (group commit).

Key state: every write unit (a batch, or an EPOCH record) is made durable first, then
the key state (``chain.key``, :mod:`meterbox.ledger._keystate`) moves on to the next
batch and names the new head, and only then are the unit's records acknowledged. A
crash in between leaves the previous key state, whose keys wrote the unit on disk, so
recovery can still check it; a key state that cannot be written fails the batch like
a failed write (the ledger is cut back to the last durable end). So every acknowledged
record is at or before the point the key state names, and a ledger that ends earlier
was shortened (recorded as LEDGER_SHORTENED when it is opened).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from meterbox._fs import (
    atomic_write,
    check_private_dir,
    disk_error,
    fsync_dir,
    pwrite_all,
    write_all,
)
from meterbox.clock import Clock
from meterbox.crypto import (
    KEY_LEN,
    ed25519_private_from_raw,
    ed25519_raw_private,
    ed25519_raw_public,
    random_bytes,
    x25519_public_from_raw,
    x25519_raw_public,
)
from meterbox.errors import FormatError, MeterboxError, StateError, VerificationError
from meterbox.ledger import _keystate
from meterbox.ledger._directory import (
    CHAIN_KEY_FILE,
    COMPACT_FILE,
    INSTANCE_KEY_FILE,
    LEDGER_FILE,
    Meta,
    lock,
)
from meterbox.ledger._fold import EpochFold, LedgerFolder
from meterbox.ledger._format import (
    FILE_HEADER_LEN,
    INSTANCE_ID_LEN,
    INTERNAL_TYPES,
    MAX_PAYLOAD_LEN,
    FileHeader,
    RecordType,
    chain,
    genesis_hash,
    unpack_payload,
)
from meterbox.ledger._frames import Record
from meterbox.ledger._keystate import KeyState, KeyStateFile
from meterbox.ledger._recovery import (
    EpochStart,
    Recovery,
    Shortened,
    scan,
    shortened,
    torn_tail,
)
from meterbox.ledger._seal import FRAME_OVERHEAD, Head, Pending, Sealer, pending
from meterbox.ledger.records import (
    Boot,
    ClockStep,
    Genesis,
    LedgerShortened,
    Shutdown,
    split_state,
)
from meterbox.ledger.records import Recovery as RecoveryPayload


@dataclass(frozen=True, slots=True)
class LedgerConfig:
    """Limits and intervals of the writer; defaults are documented in docs/spec/ledger.md."""

    max_batch_records: int = 4096
    max_batch_bytes: int = 1 << 20
    epoch_max_records: int = 65_536
    epoch_max_ms: int = 3_600_000
    checkpoint_every: int = 4096
    clock_step_threshold_ms: int = 300_000
    #: A torn tail longer than this is not a torn write: recovery refuses to cut it.
    max_torn_bytes: int = 4 << 20


@dataclass(frozen=True, slots=True)
class ClockSteps:
    """The wall-clock steps this writer sealed as CLOCK_STEP records since it opened.

    The writer is the server's one clock-step detector (it compares wall time with
    monotonic time before every batch, ``LedgerConfig.clock_step_threshold_ms``); the
    operator's views (metric, status, log) read this instead of detecting again.
    """

    count: int = 0
    #: The last step's size (wall minus monotonic moved by this much), in ms.
    last_delta_ms: int | None = None
    #: The wall time (ms since the epoch) just after the last step.
    last_wall_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    seq: int
    head: Head
    wall_ms: int


@dataclass(slots=True)
class _OpenFile:
    """The open ledger file as the writer holds it (replaced by compaction)."""

    fd: int
    lock_file: IO[bytes]
    keys: KeyStateFile
    header: FileHeader
    end: int
    epochs: list[EpochStart]


_STOP: Final = object()


class LedgerWriter:
    """Appends sealed records durably. Thread-safe; one instance per ledger directory."""

    def __init__(
        self,
        directory: Path,
        *,
        sealer: Sealer,
        instance_key: Ed25519PrivateKey,
        file: _OpenFile,
        clock: Clock,
        config: LedgerConfig,
        folder: LedgerFolder | None = None,
    ) -> None:
        self.directory = directory
        self._folder = folder
        #: Records sealed since the last durable write: folded once that write is synced.
        self._unfolded: list[tuple[RecordType, dict[str, Any], int, int]] = []
        #: Where the fold at open started: ``state``, ``genesis`` or ``partial``.
        self.fold_origin: str | None = None
        #: Whether the ledger's last record before this open was SHUTDOWN (a clean stop;
        #: known only when opened with a folder).
        self.clean_shutdown = False
        self._sealer = sealer
        self.instance_key = instance_key
        self._fd = file.fd
        self._lock_file = file.lock_file
        self._keys = file.keys
        self.file_header = file.header
        self._end = file.end
        self._epochs = file.epochs
        self._clock = clock
        self.config = config
        self._queue: queue.Queue[Any] = queue.Queue()
        self._io_lock = threading.Lock()
        self._compact_lock = threading.Lock()
        self._durable_head = sealer.head
        self._since_checkpoint = 0
        self._epoch_started_mono = clock.mono_ms()
        self._clock_offset = clock.wall_ms() - clock.mono_ms()
        self._clock_steps = ClockSteps()
        #: Set when a failed batch could not be cut back: no further write is allowed.
        self._stopped: StateError | None = None
        self.recovery: Recovery | None = None
        #: Set when the ledger did not reach the point its key state names (recorded).
        self.shortened: Shortened | None = None
        self._replay_after: int | None = None
        #: Records after ``replay_after`` (see :meth:`open`) that this boot could open:
        #: the caller re-applies them to state that may have missed them in a crash.
        self.replayed: list[Record] = []
        self._thread = threading.Thread(target=self._commit_loop, name="ledger-commit", daemon=True)

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        vendor_ledger_key: X25519PublicKey,
        vendor_key_id: bytes,
        clock: Clock,
        genesis: dict[str, Any] | None = None,
        instance_id: bytes | None = None,
        config: LedgerConfig | None = None,
        random: Callable[[int], bytes] = random_bytes,
        folder: LedgerFolder | None = None,
    ) -> LedgerWriter:
        """Create a new ledger: instance identity, chain key, epoch 0 and the GENESIS record.

        The first epoch has no STATE record: the state before the ledger's first
        record is empty by definition.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_private_dir(directory)
        if (directory / LEDGER_FILE).exists():
            raise StateError(
                f"a ledger already exists in {directory}",
                expected="an empty directory for a new ledger",
                found=str(directory / LEDGER_FILE),
                hint="open the existing ledger instead, or choose another directory",
            )
        instance_id = instance_id if instance_id is not None else random(INSTANCE_ID_LEN)
        chain_key = random(KEY_LEN)
        instance_key = ed25519_private_from_raw(random(KEY_LEN))
        atomic_write(directory / INSTANCE_KEY_FILE, ed25519_raw_private(instance_key))
        Meta(instance_id, vendor_key_id, x25519_raw_public(vendor_ledger_key)).write(directory)
        header = FileHeader(instance_id, 0, genesis_hash(instance_id))
        sealer = Sealer(
            instance_id=instance_id,
            vendor_key=vendor_ledger_key,
            vendor_key_id=vendor_key_id,
            chain_key=chain_key,
            epoch=0,
            next_seq=0,
            head_hash=header.base_hash,
            random=random,
        )
        epoch_frame = sealer.begin_epoch(
            boot_id=clock.boot_id(), wall_ms=clock.wall_ms(), mono_ms=clock.mono_ms(), first=True
        )
        genesis_payload = Genesis(ed25519_raw_public(instance_key.public_key()), genesis or {})
        (genesis_frame,) = sealer.seal_batch(
            [
                pending(
                    RecordType.GENESIS,
                    genesis_payload.to_map(),
                    wall_ms=clock.wall_ms(),
                    mono_ms=clock.mono_ms(),
                )
            ]
        )
        path = directory / LEDGER_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        write_all(fd, header.pack() + epoch_frame + genesis_frame)
        os.fsync(fd)
        fsync_dir(directory)
        _keystate.create(directory, CHAIN_KEY_FILE, _key_state(sealer, 0))
        file = _OpenFile(
            fd,
            lock(directory),
            KeyStateFile.open(directory, CHAIN_KEY_FILE),
            header,
            FILE_HEADER_LEN + len(epoch_frame) + len(genesis_frame),
            [EpochStart(0, FILE_HEADER_LEN, header.base_hash)],
        )
        writer = cls(
            directory,
            sealer=sealer,
            instance_key=instance_key,
            file=file,
            clock=clock,
            config=config or LedgerConfig(),
            folder=folder,
        )
        writer._thread.start()
        return writer

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        clock: Clock,
        config: LedgerConfig | None = None,
        random: Callable[[int], bytes] = random_bytes,
        force_recover: bool = False,
        boot_payload: dict[str, Any] | None = None,
        replay_after: int | None = None,
        folder: LedgerFolder | None = None,
    ) -> LedgerWriter:
        """Open a ledger: cut a torn tail (and record it), start a new epoch, write BOOT.

        With a ``folder``, the last epoch is folded into it (see
        :mod:`meterbox.ledger._fold`) before the new epoch's STATE record is written.
        """
        config = config or LedgerConfig()
        check_private_dir(directory)
        held = lock(directory)
        try:
            # A compaction copy left by a crash before its rename is only a partial
            # duplicate of records ledger.mbl still holds.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / COMPACT_FILE)
            meta = Meta.read(directory)
            keys = KeyStateFile.open(directory, CHAIN_KEY_FILE)
        except BaseException:
            held.close()
            raise
        try:
            instance_key = ed25519_private_from_raw((directory / INSTANCE_KEY_FILE).read_bytes())
            path = directory / LEDGER_FILE
            fd = os.open(path, os.O_RDWR)
        except BaseException:
            keys.close()
            held.close()
            raise
        ks = keys.current
        try:
            walk = EpochFold(folder) if folder is not None else None
            found = scan(fd, ks, replay_after, fold=walk)
            if found.header.instance_id != meta.instance_id:
                raise StateError(
                    "ledger file belongs to another instance",
                    expected=meta.instance_id.hex(),
                    found=found.header.instance_id.hex(),
                    hint="restore the matching ledger.mbl or chain.key",
                )
            recovery = torn_tail(
                found,
                os.fstat(fd).st_size,
                config.max_torn_bytes,
                force_recover,
                replay_after,
                committed=(ks.last_seq, ks.epoch),
            )
            if recovery is not None:
                os.ftruncate(fd, found.good_end)
                os.fsync(fd)
            short = shortened(found, ks)
            sealer = Sealer(
                instance_id=meta.instance_id,
                vendor_key=x25519_public_from_raw(meta.vendor_ledger_key),
                vendor_key_id=meta.vendor_key_id,
                chain_key=found.next_epoch_key,
                # The next epoch follows both the ledger's and the key state's: a ledger
                # cut back to an earlier epoch never reuses an epoch number.
                epoch=max(found.last_epoch, ks.epoch),
                next_seq=found.next_seq,
                head_hash=found.head_hash,
                random=random,
            )
            file = _OpenFile(fd, held, keys, found.header, found.good_end, found.epochs)
            writer = cls(
                directory,
                sealer=sealer,
                instance_key=instance_key,
                file=file,
                clock=clock,
                config=config,
                folder=folder,
            )
            if walk is not None:
                writer.clean_shutdown = walk.last_type == RecordType.SHUTDOWN
                writer.fold_origin = walk.finish()
        except BaseException:
            os.close(fd)
            keys.close()
            held.close()
            raise
        writer.recovery = recovery
        writer.shortened = short
        writer._replay_after = replay_after
        writer.replayed = found.replayed
        try:
            writer._start_boot(recovery, boot_payload)
        except BaseException:
            os.close(writer._fd)
            keys.close()
            held.close()
            raise
        writer._thread.start()
        return writer

    def _start_boot(self, recovery: Recovery | None, boot_payload: dict[str, Any] | None) -> None:
        """The records every open writes: a new epoch, RECOVERY after a cut, BOOT."""
        writer = self
        writer._roll_epoch()
        if recovery is not None:
            writer._write_now(
                RecordType.RECOVERY,
                RecoveryPayload(
                    cut_offset=recovery.cut_offset,
                    cut_bytes=recovery.cut_bytes,
                    last_good_seq=recovery.last_good_seq,
                    acked_seq=recovery.acked_seq,
                    acked_lost=recovery.acked_lost,
                ).to_map(),
            )
        short = writer.shortened
        if short is not None:
            writer._write_now(
                RecordType.LEDGER_SHORTENED,
                LedgerShortened(
                    reason=short.reason,
                    key_epoch=short.key.epoch,
                    key_batch=short.key.batch,
                    key_seq=short.key.last_seq,
                    key_hash=short.key.last_hash,
                    ledger_seq=short.ledger_seq,
                    ledger_hash=short.ledger_hash,
                    state_seq=self._replay_after,
                ).to_map(),
            )
        writer._write_now(RecordType.BOOT, Boot(boot_payload or {}).to_map())

    # ------------------------------------------------------------------ appends
    @property
    def head(self) -> Head:
        """The last durable head."""
        return self._durable_head

    @property
    def clock_steps(self) -> ClockSteps:
        """The clock steps sealed since open (replaced whole, so safe to read from any thread)."""
        return self._clock_steps

    @property
    def instance_id(self) -> bytes:
        return self.file_header.instance_id

    @property
    def epoch(self) -> int:
        return self._sealer.epoch

    def submit(self, rtype: RecordType | str, payload: dict[str, Any]) -> Future[Appended]:
        """Queue a record; the future resolves once it is durable, or fails."""
        if isinstance(rtype, str):
            rtype = RecordType.from_kind(rtype)
        if rtype in INTERNAL_TYPES:
            raise FormatError(
                "this record type is written by the ledger itself",
                expected="a server event type",
                found=rtype.name,
            )
        return self._submit(rtype, payload)

    def _submit(self, rtype: RecordType, payload: dict[str, Any]) -> Future[Appended]:
        fut: Future[Appended] = Future()
        self._queue.put((rtype, payload, fut))
        return fut

    def append(self, rtype: RecordType | str, payload: dict[str, Any]) -> Appended:
        return self.submit(rtype, payload).result()

    def close(self, shutdown_payload: dict[str, Any] | None = None) -> None:
        """Write SHUTDOWN, sync, stop the committer and release the lock."""
        if self._thread.is_alive():
            self._submit(RecordType.SHUTDOWN, Shutdown(shutdown_payload or {}).to_map())
            self._queue.put(_STOP)
            self._thread.join()
        os.close(self._fd)
        self._keys.close()
        self._lock_file.close()

    def __enter__(self) -> LedgerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ committer loop
    def _commit_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.config.max_batch_records:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[RecordType, dict[str, Any], Future[Appended]]]) -> None:
        # Mark every future running first: from here no caller can cancel it (an asyncio
        # wrapper cancelled with its request would otherwise cancel it under us, and
        # acknowledging a cancelled future raises, killing this thread). A future
        # cancelled before this point is still written: the caller has already changed
        # its state for the record, and the ledger must hold what the state holds.
        for _, _, fut in batch:
            fut.set_running_or_notify_cancel()
        with self._io_lock:
            try:
                self._maybe_roll()
                done: list[tuple[Future[Appended], Appended]] = []
                items: list[Pending] = list(self._clock_step())
                futs: list[Future[Appended] | None] = [None] * len(items)
                maps: list[dict[str, Any] | None] = [None] * len(items)
                pending_bytes = 0
                for rtype, payload, fut in batch:
                    wall = self._clock.wall_ms()
                    try:
                        item = pending(rtype, payload, wall_ms=wall, mono_ms=self._clock.mono_ms())
                    except (FormatError, TypeError, ValueError) as exc:
                        _fail(
                            fut,
                            exc
                            if isinstance(exc, FormatError)
                            else FormatError(
                                "ledger payload cannot be encoded",
                                expected="a map of strings, integers, bytes and lists",
                                found=str(exc),
                            ),
                        )
                        continue
                    items.append(item)
                    futs.append(fut)
                    maps.append(payload)
                    self._since_checkpoint += 1
                    pending_bytes += len(item.payload) + FRAME_OVERHEAD
                    if pending_bytes >= self.config.max_batch_bytes:
                        # Bound one write (and so what a torn tail can hold): a batch of
                        # its own, sealed, durable and acknowledged before the next part.
                        done = self._write_batch(items, futs, checkpoint=False, maps=maps)
                        for f, appended in done:
                            _ack(f, appended)
                        items, futs, maps, done, pending_bytes = [], [], [], [], 0
                checkpoint = self._since_checkpoint >= self.config.checkpoint_every
                done = self._write_batch(items, futs, checkpoint=checkpoint, maps=maps)
            except Exception as exc:  # noqa: BLE001 - the committer thread must survive
                # A failed batch fails only its own records: the file was cut back to the
                # last durable frame, so the next batch (when the disk has room again)
                # continues the ledger where it was.
                self._unfolded = []
                error = (
                    exc
                    if isinstance(exc, MeterboxError)
                    else StateError(
                        "the ledger could not commit a batch",
                        expected="a working disk",
                        found=f"{type(exc).__name__}: {exc}",
                    )
                )
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(error)
                return
            for fut, appended in done:
                _ack(fut, appended)

    def _write_batch(
        self,
        items: list[Pending],
        futs: list[Future[Appended] | None],
        *,
        checkpoint: bool,
        maps: list[dict[str, Any] | None] | None = None,
    ) -> list[tuple[Future[Appended], Appended]]:
        """Seal ``items`` as one batch, make it durable; return what to acknowledge."""
        if not items and not checkpoint:
            return []
        saved = _SealerState.save(self._sealer)
        first_seq = self._sealer.next_seq
        at = (self._clock.wall_ms(), self._clock.mono_ms()) if checkpoint else None
        frames = self._sealer.seal_batch(items, checkpoint=at)
        if checkpoint:
            self._since_checkpoint = 0
        hashes = self._sealer.batch_hashes
        if self._folder is not None:
            self._fold_batch(items, first_seq, maps, at)
        self._write_frames(frames, saved)
        return [
            (fut, Appended(first_seq + i, Head(first_seq + i, hashes[i]), item.wall_ms))
            for i, (item, fut) in enumerate(zip(items, futs, strict=True))
            if fut is not None
        ]

    def _write_frames(self, frames: list[bytes], saved: _SealerState) -> None:
        """Write and sync ``frames`` at the end of the file, then move the key state on.

        Nothing is acknowledged before this returns. On failure the sealer goes back
        to the last durable head and the file is cut back to the last durable end, so
        the next batch reuses sequence numbers that nothing durable or acknowledged
        ever carried; the key state stays the one that names that end.
        """
        if not frames:
            return
        if self._stopped is not None:
            saved.restore(self._sealer)
            self._unfolded = []
            raise self._stopped
        data = b"".join(frames)
        try:
            # A filling disk answers with a short write first; pwrite_all completes it
            # or raises, so a batch is never taken for written when part of it is not.
            pwrite_all(self._fd, data, self._end)
            os.fdatasync(self._fd)
        except OSError as exc:
            saved.restore(self._sealer)
            self._unfolded = []
            self._cut_back(exc)
        try:
            self._keys.write(_key_state(self._sealer, self._keys.current.generation))
        except OSError as exc:
            saved.restore(self._sealer)
            if self._keys.uncertain:
                # chain.key may name this batch, durably or not: cutting the batch now
                # could leave a key state ahead of the ledger, which reads as a shortened
                # ledger. Keep the batch (as a crash right after its write would) and stop;
                # reports of this run end before it (it was never acknowledged).
                self._stopped = StateError(
                    "the ledger stopped after a key state write it could not undo",
                    expected="a disk that accepts writes to chain.key",
                    found=exc.strerror or str(exc),
                    hint="restart the server once the disk works again; the last batch "
                    "was not acknowledged but stays in the ledger",
                )
                raise self._stopped from exc
            # The previous key state is durably the current one again: cut the batch.
            self._cut_back(exc)
        self._end += len(data)
        self._durable_head = self._sealer.head
        self._fold_durable()

    def _cut_back(self, exc: OSError) -> NoReturn:
        """Make the file end durably at the last durable frame again, then raise."""
        try:
            os.ftruncate(self._fd, self._end)
            os.fdatasync(self._fd)
        except OSError as cut:
            # The file may now hold part of a batch nobody was told about, and the
            # writer cannot remove it. Appending after it would put acknowledged
            # records behind bytes that do not verify; stop instead. Opening the
            # ledger again cuts the tail and records the cut (RECOVERY).
            self._stopped = StateError(
                "the ledger stopped after a write it could not undo",
                expected="a disk that accepts a truncation after a failed write",
                found=f"write: {exc.strerror or exc}; truncate: {cut.strerror or cut}",
                hint="restart the server once the disk works again; recovery cuts the "
                "unacknowledged tail and records it for the vendor",
            )
            raise self._stopped from exc
        raise disk_error(
            "the ledger cannot be written; the batch was not recorded",
            exc,
            hint="free disk space or fix permissions; retry the request (nothing of "
            "this batch was acknowledged, and the ledger continues where it was)",
        ) from exc

    def _write_now(self, rtype: RecordType, payload: dict[str, Any]) -> Appended:
        """Seal and sync one record as a batch of its own (used before the thread starts)."""
        wall = self._clock.wall_ms()
        item = pending(rtype, payload, wall_ms=wall, mono_ms=self._clock.mono_ms())
        self._write_batch([item], [None], checkpoint=False)
        return Appended(self._sealer.head.seq, self._sealer.head, wall)

    def _maybe_roll(self) -> None:
        age = self._clock.mono_ms() - self._epoch_started_mono
        if (
            self._sealer.records_in_epoch >= self.config.epoch_max_records
            or age >= self.config.epoch_max_ms
        ):
            self._roll_epoch()

    def _roll_epoch(self) -> None:
        """Start the next epoch: EPOCH frame durable first, then the key state for it."""
        saved = _SealerState.save(self._sealer)
        first = not self._epochs and self._sealer.next_seq == 0
        prev_hash, offset, seq = self._sealer.head_hash, self._end, self._sealer.next_seq
        wall, mono = self._clock.wall_ms(), self._clock.mono_ms()
        data = self._sealer.begin_epoch(
            boot_id=self._clock.boot_id(), wall_ms=wall, mono_ms=mono, first=first
        )
        # The epoch's STATE run goes out in the same durable write as its EPOCH record:
        # an epoch on disk always starts with the state its records fold onto.
        states = self._state_items(wall, mono)
        self._write_frames([data, *self._sealer.seal_batch(states)] if states else [data], saved)
        self._epochs.append(EpochStart(seq, offset, prev_hash))
        self._epoch_started_mono = self._clock.mono_ms()

    def _clock_step(self) -> Iterator[Pending]:
        wall, mono = self._clock.wall_ms(), self._clock.mono_ms()
        offset = wall - mono
        delta = offset - self._clock_offset
        if abs(delta) >= self.config.clock_step_threshold_ms:
            self._clock_offset = offset
            self._clock_steps = ClockSteps(self._clock_steps.count + 1, delta, wall)
            yield pending(
                RecordType.CLOCK_STEP,
                ClockStep(delta_ms=delta, wall_ms=wall, mono_ms=mono).to_map(),
                wall_ms=wall,
                mono_ms=mono,
            )

    def _fold_batch(
        self,
        items: list[Pending],
        first_seq: int,
        maps: list[dict[str, Any] | None] | None,
        checkpoint: tuple[int, int] | None,
    ) -> None:
        """Queue a sealed batch's records for the fold, once its write is durable."""
        for i, item in enumerate(items):
            m = maps[i] if maps is not None else None
            payload = m if m is not None else unpack_payload(item.payload)
            self._unfolded.append((item.type, payload, item.wall_ms, first_seq + i))
        if checkpoint is not None:
            seq = first_seq + len(items)
            self._unfolded.append((RecordType.CHECKPOINT, {}, checkpoint[0], seq))

    def _fold_durable(self) -> None:
        folder, self._unfolded, items = self._folder, [], self._unfolded
        if folder is None:
            return
        for rtype, payload, wall, seq in items:
            if rtype != RecordType.STATE:
                folder.apply(rtype, payload, wall, seq)

    def _state_items(self, wall: int, mono: int) -> list[Pending]:
        """The STATE run that follows an EPOCH record (none without a folder)."""
        if self._folder is None:
            return []
        # Room for the header fields the split does not see (msgpack framing is small).
        parts = split_state(self._folder.snapshot(), MAX_PAYLOAD_LEN - 64)
        return [pending(RecordType.STATE, p.to_map(), wall_ms=wall, mono_ms=mono) for p in parts]

    # ------------------------------------------------------- reading, compaction
    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """A consistent view of the durable ledger: header, head and the frames' bytes.

        Compaction is held off while the snapshot is open; appends go on (they only
        write past the snapshot's end).
        """
        with self._compact_lock:
            with self._io_lock:
                snap = Snapshot(self.file_header, self._durable_head, self._fd, self._end)
            yield snap

    def verify_point(self, point: Head) -> None:
        """Raise VerificationError unless ``point`` is a head this very ledger had."""
        with self._compact_lock, self._io_lock:
            self._verify_point(point)

    def _verify_point(self, point: Head) -> None:
        if point.seq > self._durable_head.seq:
            raise VerificationError(
                "receipt acknowledges records this ledger does not have",
                expected=f"a head at or before seq {self._durable_head.seq}",
                found=f"seq {point.seq}",
                hint="this receipt was made for another server or a later state",
            )
        self._check_point(point)

    def compact(self, acknowledged: Head) -> int:
        """Drop records the vendor has acknowledged; returns the bytes removed.

        Keeps everything from the start of the epoch that holds ``acknowledged.seq + 1``
        so the next report opens with an EPOCH record. Verifies first that
        ``acknowledged`` is a point of this very ledger.
        """
        with self._compact_lock, self._io_lock:
            self._verify_point(acknowledged)
            keep = [e for e in self._epochs if e.seq <= acknowledged.seq + 1]
            if not keep:
                return 0
            start = keep[-1]
            if start.offset <= FILE_HEADER_LEN:
                return 0
            new_header = FileHeader(self.file_header.instance_id, start.seq, start.prev_hash)
            path = self.directory / LEDGER_FILE
            tmp = path.with_name(COMPACT_FILE)
            try:
                self._copy_kept(tmp, new_header, start.offset)
                os.replace(tmp, path)
            except (OSError, MeterboxError) as exc:
                # The original is untouched until the rename, and the rename is the
                # last step that can fail here: drop the copy and keep the ledger.
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if isinstance(exc, MeterboxError):
                    raise
                raise disk_error(
                    "the ledger could not be compacted; ledger.mbl is unchanged",
                    exc,
                    hint="free disk space; the next receipt import compacts the ledger",
                ) from exc
            removed = start.offset - FILE_HEADER_LEN
            old_fd, self._fd = self._fd, os.open(path, os.O_RDWR)
            os.close(old_fd)
            self._end -= removed
            self.file_header = new_header
            self._epochs = [
                EpochStart(e.seq, e.offset - removed, e.prev_hash)
                for e in self._epochs
                if e.seq >= start.seq
            ]
            # Until the directory is synced a power loss may bring back the long file.
            # That is a valid ledger too (the same records over an older base), so a
            # failed directory sync loses nothing and is not worth failing the import.
            with contextlib.suppress(OSError):
                fsync_dir(self.directory)
            return removed

    def _copy_kept(self, tmp: Path, header: FileHeader, start: int) -> None:
        """Write header + frames from ``start`` to ``tmp``, fsync it, and read it back.

        The copy must hold exactly the frames that continue ``header`` up to the
        durable head: its length, its header and the chain hash at its last record
        are checked before it may replace the ledger.
        """
        out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(out, header.pack())
            pos = start
            while pos < self._end:
                data = os.pread(self._fd, min(1 << 20, self._end - pos), pos)
                if not data:
                    break
                write_all(out, data)
                pos += len(data)
            os.fsync(out)
            expected = FILE_HEADER_LEN + self._end - start
            size = os.fstat(out).st_size
            if pos != self._end or size != expected:
                raise StateError(
                    "the compaction copy is incomplete",
                    expected=f"{expected} bytes",
                    found=f"{size} bytes",
                    hint="nothing was changed; the ledger is compacted with the next receipt",
                )
            if FileHeader.unpack(os.pread(out, FILE_HEADER_LEN, 0)) != header:
                raise StateError(
                    "the compaction copy has the wrong header",
                    expected="the header just written",
                    found="different bytes read back",
                    hint="check the disk; nothing was changed",
                )
            h, seq, at = header.base_hash, header.base_seq - 1, FILE_HEADER_LEN
            while at < size:
                length = 2 + int.from_bytes(os.pread(out, 2, at), "big")
                h = chain(h, os.pread(out, length, at))
                at += length
                seq += 1
            head = self._durable_head
            if at != size or seq != head.seq or h != head.hash:
                raise StateError(
                    "the compaction copy does not end at the ledger's head",
                    expected=f"seq {head.seq} with chain hash {head.hash.hex()[:16]}...",
                    found=f"seq {seq} with chain hash {h.hex()[:16]}...",
                    hint="check the disk; nothing was changed",
                )
        finally:
            os.close(out)

    def _check_point(self, point: Head) -> None:
        """Recompute the chain hash at ``point.seq`` and compare (caller holds the lock)."""
        base = self.file_header
        if point.seq < base.base_seq - 1:
            return  # already compacted away; nothing left to compare against
        h, seq, pos = base.base_hash, base.base_seq - 1, FILE_HEADER_LEN
        while seq < point.seq:
            prefix = os.pread(self._fd, 2, pos)
            length = 2 + int.from_bytes(prefix, "big")
            h = chain(h, os.pread(self._fd, length, pos))
            pos += length
            seq += 1
        if h != point.hash:
            raise VerificationError(
                "receipt does not match this ledger",
                expected=f"chain hash {h.hex()} at seq {point.seq}",
                found=point.hash.hex(),
                hint="the receipt was issued for another server instance or a forked ledger",
            )


@dataclass(frozen=True, slots=True)
class Snapshot:
    header: FileHeader
    head: Head
    fd: int
    end: int

    @property
    def frames_len(self) -> int:
        return self.end - FILE_HEADER_LEN

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        pos = FILE_HEADER_LEN
        while pos < self.end:
            data = os.pread(self.fd, min(size, self.end - pos), pos)
            if not data:
                return
            pos += len(data)
            yield data


def _key_state(s: Sealer, generation: int) -> KeyState:
    """The key state that follows the sealer's last frame (its generation set on write)."""
    assert s.record_key_bytes is not None and s.batch_key is not None
    head = s.head
    return KeyState(
        generation,
        s.epoch,
        s.batch,
        head.seq,
        head.hash,
        s.record_key_bytes,
        s.batch_key,
        s.next_epoch_key,
    )


@dataclass(frozen=True, slots=True)
class _SealerState:
    epoch: int
    next_epoch_key: bytes
    next_seq: int
    head_hash: bytes
    records_in_epoch: int
    batch: int
    batch_key: bytes | None
    record_key: bytes | None

    @classmethod
    def save(cls, s: Sealer) -> _SealerState:
        return cls(
            s.epoch,
            s.next_epoch_key,
            s.next_seq,
            s.head_hash,
            s.records_in_epoch,
            s.batch,
            s.batch_key,
            s.record_key_bytes,
        )

    def restore(self, s: Sealer) -> None:
        s.restore_keys(self.epoch, self.next_epoch_key, self.batch, self.batch_key, self.record_key)
        s.next_seq, s.head_hash, s.records_in_epoch = (
            self.next_seq,
            self.head_hash,
            self.records_in_epoch,
        )


def _ack(fut: Future[Appended], appended: Appended) -> None:
    """Resolve a committed record's future; a caller that gave up is not told."""
    if not fut.cancelled():
        fut.set_result(appended)


def _fail(fut: Future[Appended], exc: BaseException) -> None:
    if not fut.cancelled():
        fut.set_exception(exc)
